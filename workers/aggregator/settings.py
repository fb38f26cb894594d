"""Settings of the aggregator and its alert outputs: the shared Kafka, Elasticsearch and
observability parts plus the fields below (env MOODWATCH_*, or .env)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from workers.aggregator.detection import DetectorConfig
from workers.common.settings import (
    PROJECT_ROOT,
    ElasticsearchSettings,
    EventTimeSettings,
    KafkaSettings,
    ObservabilitySettings,
)


class AggregatorSettings(KafkaSettings, ElasticsearchSettings, EventTimeSettings, ObservabilitySettings):
    # -- the faust app --------------------------------------------------------------------------
    aggregator_app_id: str = Field(
        "moodwatch-aggregator",
        description="faust app id: the consumer group and the prefix of the internal topics (changelog, by-channel)",
    )
    aggregator_partitions: int = Field(
        4, ge=1, le=256, description="partitions of the internal by-channel and changelog topics (max parallel workers)"
    )
    aggregator_replication: int = Field(1, ge=1, description="replication factor of the internal topics")
    aggregator_store: str = Field(
        "memory://",
        description="faust table store: memory:// (state rebuilt from the changelog at start) or rocksdb:// (needs rocksdict)",
    )
    aggregator_data_dir: Path = Field(
        PROJECT_ROOT / "artifacts" / "aggregator", description="faust data directory (table stores, worker state)"
    )
    aggregator_verify_end_offsets: bool = Field(
        True,
        description=(
            "check the broker's reported end offsets by reading the tail of each changelog partition before table "
            "recovery; needed on brokers such as tansu 0.6 whose ListOffsets answers base-of-last-batch + 1"
        ),
    )
    aggregator_end_offset_probe_timeout_s: float = Field(
        10.0, gt=0, description="time limit for reading the changelog tails when verifying end offsets"
    )
    aggregator_batch_max: int = Field(
        500, ge=1, le=100_000, description="posts aggregated per batch (writes to one key within a batch are coalesced)"
    )
    aggregator_batch_wait_s: float = Field(0.25, gt=0, description="longest wait for a batch to fill")
    aggregator_commit_interval_s: float = Field(2.0, gt=0, description="how often consumed offsets are committed")
    aggregator_metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="port of the aggregator's /metrics, /livez, /readyz; unset = metrics_port (as in the chart); 0 = off",
    )
    aggregator_log_level: str = Field("WARNING", description="log level of faust itself (our own logs use log_level)")
    aggregator_stall_exit_s: float = Field(
        90.0,
        ge=0,
        description=(
            "exit with code 75 (to be restarted; /livez turns 503 first) when the worker is ready but its agents have "
            "taken no record for this long from an input partition with records waiting; 0 = no watchdog"
        ),
    )

    # -- windows ------------------------------------------------------------------------------
    window_s: int = Field(300, ge=1, description="tumbling window size in seconds (event time); spikes are per window")
    hop_size_s: int = Field(900, ge=1, description="hopping window size in seconds (a multiple of hop_step_s)")
    hop_step_s: int = Field(300, ge=1, description="hopping window advance in seconds")
    baseline_windows: int = Field(12, ge=1, description="trailing tumbling windows pooled into the baseline")
    retention_windows: int = Field(
        14,
        ge=2,
        description="tumbling windows kept behind the newest one (> baseline_windows); older posts count as late",
    )
    dedup_shards: int = Field(8, ge=1, le=1024, description="post-id dedup sets per window (smaller changelog records)")

    # -- negative spike detection -------------------------------------------------------------
    spike_min_count: int = Field(12, ge=1, description="posts a window needs before it can raise a negative spike")
    spike_min_baseline_count: int = Field(30, ge=1, description="posts the baseline windows need together")
    spike_alpha_arm: float = Field(
        1e-5, gt=0, lt=1, description="binomial test p-value below which a spike alerts (arm)"
    )
    spike_alpha_disarm: float = Field(
        0.05, gt=0, lt=1, description="p-value above which a closed window ends the incident"
    )
    spike_min_effect: float = Field(0.25, ge=0, le=1, description="negative share minus baseline share needed to alert")
    spike_disarm_effect: float = Field(
        0.10, ge=0, le=1, description="effect below which a closed window ends the incident"
    )
    spike_cooldown_windows: int = Field(
        3, ge=0, description="windows after an alert in which no new alert of that kind is raised"
    )
    spike_prior_negative_share: float = Field(
        0.3, ge=0, le=1, description="prior negative share the baseline is shrunk towards"
    )
    spike_prior_strength: float = Field(10.0, ge=0, description="weight of that prior, in posts")

    # -- emotion shift detection --------------------------------------------------------------
    shift_min_count: int = Field(20, ge=1, description="posts a closed window needs to raise an emotion shift")
    shift_alpha: float = Field(
        1e-4, gt=0, lt=1, description="p-value of the conditional binomial test below which a shift alerts"
    )
    shift_min_effect: float = Field(
        0.10, ge=0, le=1, description="rise of the new dominant emotion's mean probability needed"
    )
    shift_min_lead: float = Field(
        0.05, ge=0, le=1, description="lead of the new dominant emotion over the old one needed"
    )
    shift_disarm_effect: float = Field(
        0.05, ge=0, le=1, description="rise below which a closed window ends the shift incident"
    )

    aggregator_thresholds_refresh_s: float = Field(
        30.0, ge=0, description=(
            "re-read the per-channel spike thresholds admins set in the dashboard (es_thresholds_index) this "
            "often, in seconds; 0 = off (the global spike_* settings for every channel)"
        ),
    )  # fmt: skip

    # -- alert outputs ------------------------------------------------------------------------
    alerts_to_elasticsearch: bool = Field(True, description="index alerts into es_alerts_index (_id = alert_id)")
    alert_webhook_url: str | None = Field(None, description="POST every alert as JSON to this URL (unset = no webhook)")
    alert_webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key for the X-Moodwatch-Signature header (never logged)"
    )
    alert_webhook_timeout_s: float = Field(5.0, gt=0, description="timeout of one webhook request")
    alert_webhook_max_attempts: int = Field(
        6, ge=1, description="webhook attempts per alert (retried on 5xx, 429, network errors)"
    )
    alert_webhook_backoff_max_s: float = Field(30.0, gt=0, description="longest wait between webhook attempts")

    @model_validator(mode="after")
    def _windows_consistent(self) -> AggregatorSettings:
        self.detector_config()  # raises ValueError with a clear message on inconsistent values
        return self

    def detector_config(self) -> DetectorConfig:
        return DetectorConfig(
            window_s=self.window_s,
            hop_size_s=self.hop_size_s,
            hop_step_s=self.hop_step_s,
            baseline_windows=self.baseline_windows,
            retention_windows=self.retention_windows,
            min_count=self.spike_min_count,
            min_baseline_count=self.spike_min_baseline_count,
            alpha_arm=self.spike_alpha_arm,
            alpha_disarm=self.spike_alpha_disarm,
            min_effect=self.spike_min_effect,
            disarm_effect=self.spike_disarm_effect,
            cooldown_windows=self.spike_cooldown_windows,
            prior_negative_share=self.spike_prior_negative_share,
            prior_strength=self.spike_prior_strength,
            shift_min_count=self.shift_min_count,
            shift_alpha=self.shift_alpha,
            shift_min_effect=self.shift_min_effect,
            shift_min_lead=self.shift_min_lead,
            shift_disarm_effect=self.shift_disarm_effect,
            dedup_shards=self.dedup_shards,
        )
