"""Settings parts shared by the services: environment variables with the MOODWATCH_ prefix (or .env).

Each service composes the parts it needs (``workers/<service>/settings.py``) and adds its own
fields; the variable names are the same wherever a part is used, so one environment (and the
Helm chart's ConfigMap) configures every process. Every field is documented in README.md
(section "Settings", rendered by ``python -m workers.cli.settings_doc``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import AwareDatetime, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.common.event_time import EventTimeBounds

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class MoodwatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOODWATCH_", env_file=".env", extra="ignore")


class KafkaSettings(MoodwatchSettings):
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    posts_topic: str = Field("posts", description="input topic of PostV1 JSON (key = post_id)")
    results_topic: str = Field("post-sentiment", description="output topic of AnalysisResultV2 JSON (key = post_id)")
    dlq_topic: str = Field("posts.dlq", description="dead-letter topic: original bytes + error headers")
    alerts_topic: str = Field("alerts", description="AlertV1 JSON from the aggregator")
    kafka_session_timeout_ms: int = Field(10_000, description="group session timeout; a join takes about half of it")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol"
    )
    kafka_sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(
        None, description="SASL password (secret: env or secret file, never logged)"
    )
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle for Kafka TLS")


class ElasticsearchSettings(MoodwatchSettings):
    es_url: str = Field("http://127.0.0.1:9200", description="Elasticsearch (8.x API) URL")
    es_username: str | None = Field(None, description="basic-auth user")
    es_password: SecretStr | None = Field(None, description="basic-auth password (secret)")
    es_api_key: SecretStr | None = Field(None, description="API key instead of basic auth (secret)")
    es_ca_certs: Path | None = Field(None, description="CA bundle for Elasticsearch TLS")
    es_results_index: str = Field(
        "moodwatch-results", description="index of AnalysisResultV2 documents (v1 ones still parse; _id = post_id)"
    )
    es_alerts_index: str = Field("moodwatch-alerts", description="index of AlertV1 documents (_id = alert_id)")
    es_reviews_index: str = Field(
        "moodwatch-reviews", description="index of ReviewV1 documents: moderators' decisions, append-only"
    )
    es_thresholds_index: str = Field(
        "moodwatch-thresholds",
        description="index of ChannelThresholdsV1 documents: per-channel alert thresholds, append-only, latest wins",
    )
    es_request_timeout_s: float = Field(
        10.0, gt=0, description="per-request timeout; a timed-out write counts as a store error and is retried"
    )
    store_retry_max_s: float = Field(
        600.0,
        description=(
            "give up waiting out a store, model backend or broker outage after this long "
            "(the worker exits; nothing is committed)"
        ),
    )


class LocalImageSettings(MoodwatchSettings):
    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1, description="largest image accepted, in bytes")
    image_local_root: Path | None = Field(
        None, description="if set, image.path must lie under this folder; unset = local paths refused"
    )


class ImageSettings(LocalImageSettings):
    image_max_pixels: int = Field(40_000_000, ge=1, description="largest width*height decoded (bomb guard)")
    image_analysis_max_side: int = Field(
        1024,
        ge=256,
        le=16384,
        description=(
            "decoded images are downscaled to this long side before analysis (the models use 224 px; "
            "region boxes stay in source pixels); bounds memory per batch"
        ),
    )
    image_decode_budget_pixels: int = Field(
        80_000_000,
        ge=1,
        description=(
            "source pixels decoded at full size at once across the fetch threads; "
            "larger work waits its turn (bounds peak memory)"
        ),
    )
    image_fetch_timeout_s: float = Field(5.0, gt=0, le=60, description="total deadline for fetching one image URL")
    image_formats: str = Field(
        "JPEG,PNG,GIF,WEBP,BMP", description="decoders allowed (TIFF is off: large attack surface)"
    )
    image_allowed_hosts: str = Field(
        "*", description="comma-separated host allowlist for image URLs; * = any public host"
    )
    image_allow_private_addresses: bool = Field(False, description="tests only: allow loopback/private URL targets")
    fetch_workers: int = Field(8, ge=1, le=256, description="threads fetching/decoding the images of a batch")


class ModelSettings(MoodwatchSettings):
    backend: Literal["local", "triton"] = Field("local", description="where the models run: in-process torch or Triton")
    device: str = Field("cpu", description="torch device of the local backend")
    artifacts_dir: Path = Field(PROJECT_ROOT / "artifacts", description="build outputs: caches, indexes, trained heads")
    heads_path: Path = Field(PROJECT_ROOT / "models" / "weights" / "heads.pt", description="trained heads checkpoint")
    index_dir: Path | None = Field(
        None, description="retrieval index folder; default: built from the shipped sentences"
    )
    image_encoder: str = Field(
        "efficientnet-lite0", description="'efficientnet-lite0' or a Hugging Face id / local path"
    )
    text_encoder: str = Field("all-MiniLM-L6-v2", description="'all-MiniLM-L6-v2' or a Hugging Face id / local path")
    retrieval_k: int = Field(3, ge=1, le=20, description="retrieved sentences the fusion head reads per image (MIRA k)")
    evidence_candidates: int = Field(
        16, ge=1, le=256, description="sentences retrieved per image as evidence candidates (>= retrieval_k)"
    )
    evidence_weight: float = Field(
        0.2,
        ge=0,
        le=10,
        description="weight of log p(emotion) against similarity when ranking the evidence shown (0 = similarity)",
    )
    text_languages: str = Field(
        "en",
        description="comma-separated languages (primary subtags) whose post text the model reads; MiniLM is "
        "English-only, other posts are analysed image only",
    )
    regions_top_k: int = Field(8, ge=0, le=64, description="affective regions kept per image (K)")
    regions_enabled: bool = Field(True, description="compute affective regions")
    region_proposals: Literal["learned", "selective_search"] = Field(
        "learned",
        description="learned: proposals from the backbone's feature map, batched with it on the device (same accuracy, "
        "16x the posts/s, regions that survive a JPEG re-save; needs the efficientnet-lite0 map, see README); "
        "selective_search: the paper's OpenCV path on the worker's CPU (~0.3 s per image), any image encoder",
    )
    backbone_runtime: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto",
        description="what runs the image backbone in the local analyzer: onnxruntime (an ONNX export of the "
        "backbone, made once into <artifacts_dir>/onnx; 4-7x faster than torch on a CPU; with learned proposals "
        "and a flat index the whole learned analysis is one ONNX graph), torch, or auto (onnxruntime on a CPU when "
        "the package is installed, torch on a GPU)",
    )
    backbone_chunk: int = Field(
        0,
        ge=0,
        le=1024,
        description="run the backbone over chunks of this many images (0 = the whole micro-batch at once); "
        "measured on a 2-core CPU (python -m workers.devstack.bench_layouts): onnxruntime is fastest on the "
        "whole batch, eager torch on chunks of 4 (see README)",
    )

    @property
    def text_language_list(self) -> tuple[str, ...]:
        return tuple(lang.strip().lower() for lang in self.text_languages.split(",") if lang.strip())


class TritonSettings(MoodwatchSettings):
    triton_url: str = Field("127.0.0.1:8001", description="Triton gRPC endpoint")
    triton_model: str = Field(
        "moodwatch_learned",
        description="top-level Triton model the worker calls: moodwatch_learned (MOODWATCH_REGION_PROPOSALS=learned), "
        "or moodwatch / moodwatch_fused (selective_search)",
    )
    triton_timeout_s: float = Field(30.0, description="per-request timeout to Triton")
    triton_connect_timeout_s: float = Field(5.0, gt=0, description="timeout of Triton liveness/readiness/config calls")
    triton_retry_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="tries per Triton request while the server answers UNAVAILABLE (backoff from 0.2 s)",
    )
    triton_max_request_images: int | None = Field(
        None, ge=1, description="split micro-batches into requests of at most this many images (default: model max)"
    )


class ObservabilitySettings(MoodwatchSettings):
    metrics_port: int = Field(9464, description="Prometheus metrics + health on this port; 0 = off")
    metrics_host: str = Field("127.0.0.1", description="bind address of metrics/health (0.0.0.0 in a pod)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING, ERROR")
    log_json: bool | None = Field(None, description="JSON logs; default: JSON when stderr is not a TTY")


class EventTimeSettings(MoodwatchSettings):
    event_time_max_future_skew_s: float = Field(
        300.0,
        ge=0,
        description=(
            "a post's created_at more than this far ahead of the time it is seen is not trusted: the post is "
            "placed at the time it was seen and flagged (event_time_clamped)"
        ),
    )
    event_time_floor: AwareDatetime = Field(
        datetime(2000, 1, 1, tzinfo=UTC),
        description="a created_at before this instant is not trusted either (placed at the time seen, flagged)",
    )

    def event_time_bounds(self) -> EventTimeBounds:
        return EventTimeBounds(timedelta(seconds=self.event_time_max_future_skew_s), self.event_time_floor)


class AnalysisSettings(ModelSettings, TritonSettings, ObservabilitySettings):
    """What running the analysis needs: the models, where they run, logs. The analyzer service and
    the model commands (analyze files, train, eval, index, triton export/serve) read it."""
