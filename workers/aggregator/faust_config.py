"""The faust.App options of the aggregator, from its settings."""

from __future__ import annotations

from typing import Any

import faust

from workers.aggregator.faust_fixes import SeekFirstTableManager
from workers.aggregator.settings import AggregatorSettings


def faust_options(settings: AggregatorSettings) -> dict[str, Any]:
    session_timeout = settings.kafka_session_timeout_ms / 1000
    return dict(
        id=settings.aggregator_app_id,
        broker=broker_urls(settings),
        broker_credentials=credentials(settings),
        store=settings.aggregator_store,
        datadir=str(settings.aggregator_data_dir),
        topic_partitions=settings.aggregator_partitions,
        topic_replication_factor=settings.aggregator_replication,
        topic_allow_declare=True,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(1.0, session_timeout / 3),
        broker_commit_interval=settings.aggregator_commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        web_bind="127.0.0.1",
        table_standby_replicas=0,
        autodiscover=False,
        TableManager=SeekFirstTableManager,
    )


def broker_urls(settings: AggregatorSettings) -> list[str]:
    return [f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()]


def credentials(settings: AggregatorSettings) -> Any:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        import ssl

        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        ssl_context = ssl.create_default_context(cafile=cafile)
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password,
        mechanism=settings.kafka_sasl_mechanism or "PLAIN",
        ssl_context=ssl_context,
    )
