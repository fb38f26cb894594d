"""Settings of the analyzer worker: the shared parts plus consumer and micro-batch fields."""

from __future__ import annotations

from pydantic import Field

from workers.common.settings import (
    AnalysisSettings,
    ElasticsearchSettings,
    EventTimeSettings,
    ImageSettings,
    KafkaSettings,
)


class AnalyzerSettings(KafkaSettings, ElasticsearchSettings, ImageSettings, EventTimeSettings, AnalysisSettings):
    consumer_group: str = Field("moodwatch-analyzer", description="consumer group of the analyzer workers")
    kafka_max_poll_interval_ms: int = Field(
        300_000, description="max time between polls before the group evicts the worker"
    )
    kafka_stall_exit_s: float = Field(
        90.0,
        gt=0,
        description=(
            "exit with code 75 (to be restarted) when a consumer poll has not returned, or polls returned "
            "nothing while the partitions have lag, for this long (kafka-python 3.0 stalls after broker restarts)"
        ),
    )
    commit_timeout_ms: int = Field(
        10_000, ge=100, description="one offset-commit attempt; a failed attempt is retried like a store outage"
    )
    batch_max_posts: int = Field(32, ge=1, le=4096, description="micro-batch size: posts per analysis batch")
    batch_max_wait_ms: int = Field(500, ge=1, description="max wait after the first post before a partial batch runs")
