"""Kafka client construction (kafka-python) with TLS / SASL options passed through from settings."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from workers.common.settings import KafkaSettings


def security_options(settings: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_ssl_cafile:
        opts["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return opts


def make_consumer(settings: KafkaSettings, *, group_id: str, client_id: str, **overrides: Any) -> KafkaConsumer:
    """A group consumer that never auto-commits: offsets are committed by the caller after its work is stored."""
    opts: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.kafka_session_timeout_ms // 3),
        client_id=client_id,
        **security_options(settings),
    )
    opts.update(overrides)
    return KafkaConsumer(**opts)


def make_producer(settings: KafkaSettings, **overrides: Any) -> KafkaProducer:
    opts: dict[str, Any] = dict(
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        acks="all",
        linger_ms=5,
        retries=5,
        max_in_flight_requests_per_connection=1,
        client_id="moodwatch-producer",
        **security_options(settings),
    )
    opts.update(overrides)
    return KafkaProducer(**opts)


def ensure_topics(settings: KafkaSettings, names: list[str], partitions: int = 4, replication: int = 1) -> None:
    """Create topics that don't exist yet (idempotent). Brokers that auto-create would pick their own layout."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap.split(","), **security_options(settings))
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
