"""Prometheus metrics of the analyzer worker: base units, _total / _seconds suffixes, no per-post labels."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("poll", "validate", "fetch", "analyze", "store", "produce", "commit")


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry
    posts_consumed: Counter
    posts_processed: Counter
    posts_dead_lettered: Counter
    batches: Counter
    batch_size: Histogram
    stage_duration: Histogram
    consumer_lag: Gauge
    store_errors: Counter
    backend_errors: Counter
    producer_errors: Counter
    commit_errors: Counter
    event_time_clamped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry if registry is not None else REGISTRY
        return cls(
            registry=registry,
            posts_consumed=Counter("moodwatch_posts_consumed", "Posts read from the posts topic", registry=registry),
            posts_processed=Counter("moodwatch_posts_processed", "Posts analysed and stored", registry=registry),
            posts_dead_lettered=Counter(
                "moodwatch_posts_dead_lettered", "Posts sent to the dead-letter topic", ["stage"], registry=registry
            ),
            batches=Counter("moodwatch_batches", "Micro-batches completed and committed", registry=registry),
            batch_size=Histogram(
                "moodwatch_batch_size",
                "Posts per micro-batch",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
                registry=registry,
            ),
            stage_duration=Histogram(
                "moodwatch_stage_duration_seconds",
                "Wall time per batch stage",
                ["stage"],
                buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            consumer_lag=Gauge(
                "moodwatch_consumer_lag", "Messages behind the partition end offset", ["partition"], registry=registry
            ),
            store_errors=Counter("moodwatch_store_errors", "Failed store write attempts", registry=registry),
            backend_errors=Counter("moodwatch_backend_errors", "Failed model backend calls", registry=registry),
            producer_errors=Counter("moodwatch_producer_errors", "Failed Kafka produce attempts", registry=registry),
            commit_errors=Counter("moodwatch_commit_errors", "Failed offset commit attempts", registry=registry),
            event_time_clamped=Counter(
                "moodwatch_event_time_clamped",
                "Posts whose created_at was not trusted (reason: future, before_floor) and was set to the time seen",
                ["reason"],
                registry=registry,
            ),
        )


@functools.cache
def default_metrics() -> WorkerMetrics:
    """The process-wide metrics on the default registry (what /metrics serves); created once."""
    return WorkerMetrics.create()
