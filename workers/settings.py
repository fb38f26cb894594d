"""All runtime settings: environment variables with the MOODWATCH_ prefix (or a .env file).

Every field here is documented in README.md (section "Settings"); keep the two in step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOODWATCH_", env_file=".env", extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, comma separated")
    posts_topic: str = "posts"
    results_topic: str = "post-sentiment"
    dlq_topic: str = "posts.dlq"
    alerts_topic: str = "alerts"
    consumer_group: str = "moodwatch-analyzer"
    kafka_session_timeout_ms: int = 10_000
    kafka_max_poll_interval_ms: int = 300_000
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    # Micro-batching
    batch_max_posts: int = Field(32, ge=1, le=4096)
    batch_max_wait_ms: int = Field(500, ge=1)
    fetch_workers: int = Field(8, ge=1, le=256)

    # Elasticsearch (or any store speaking its API)
    es_url: str = "http://127.0.0.1:9200"
    es_username: str | None = None
    es_password: SecretStr | None = None
    es_api_key: SecretStr | None = None
    es_ca_certs: Path | None = None
    es_results_index: str = "moodwatch-results"
    es_alerts_index: str = "moodwatch-alerts"
    es_request_timeout_s: float = 30.0
    store_retry_max_s: float = Field(600.0, description="give up retrying a failing store write after this long")

    # Images
    image_max_bytes: int = Field(10 * 1024 * 1024, ge=1)
    image_max_pixels: int = Field(40_000_000, ge=1)
    image_fetch_timeout_s: float = Field(5.0, gt=0, le=60)
    image_formats: str = Field("JPEG,PNG,GIF,WEBP,BMP", description="decoders allowed (TIFF is off: large attack surface)")
    image_allowed_hosts: str = Field("*", description="comma-separated host allowlist for image URLs; * = any public host")
    image_allow_private_addresses: bool = Field(False, description="tests only: allow loopback/private URL targets")
    image_local_root: Path | None = Field(None, description="if set, image.path must lie under this folder; unset = local paths refused")

    # Analyzer
    backend: Literal["local", "triton"] = "local"
    device: str = "cpu"
    artifacts_dir: Path = PROJECT_ROOT / "artifacts"
    heads_path: Path = PROJECT_ROOT / "models" / "weights" / "heads.pt"
    index_dir: Path | None = Field(None, description="retrieval index folder; default: built from the shipped sentences")
    image_encoder: str = Field("efficientnet-lite0", description="'efficientnet-lite0' or a Hugging Face id / local path")
    text_encoder: str = Field("all-MiniLM-L6-v2", description="'all-MiniLM-L6-v2' or a Hugging Face id / local path")
    retrieval_k: int = Field(3, ge=1, le=20)
    regions_top_k: int = Field(8, ge=0, le=64)
    regions_enabled: bool = True

    # Triton
    triton_url: str = "127.0.0.1:8001"
    triton_model: str = "moodwatch"
    triton_timeout_s: float = 30.0

    # Observability
    metrics_port: int = Field(9464, description="Prometheus metrics + health on this port; 0 = off")
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_json: bool | None = Field(None, description="JSON logs; default: JSON when stderr is not a TTY")


def get_settings(**overrides) -> Settings:
    return Settings(**overrides)
