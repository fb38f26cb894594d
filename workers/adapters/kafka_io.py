"""Kafka client construction (kafka-python) with TLS / SASL options passed through from settings, and the
boundary where a broker outage becomes `BrokerUnavailable` (a TransientError)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipelines.errors import TransientError
from workers.common.settings import KafkaSettings


class BrokerUnavailable(TransientError):
    """The Kafka cluster did not take the request (an outage, not the request's fault): retry it later."""


@contextmanager
def broker_outages(*, producing: bool = False) -> Iterator[None]:
    """Raise BrokerUnavailable for a retriable KafkaError or a socket error; let every other error through.

    When producing, every KafkaError is an outage: a result or dead letter that was not acknowledged can
    only be sent again later, there is nowhere else to put it.
    """
    try:
        yield
    except KafkaError as exc:
        if exc.retriable or producing:
            raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        raise
    except OSError as exc:  # ConnectionError and TimeoutError included
        raise BrokerUnavailable(f"{type(exc).__name__}: {exc}") from exc


class OutageAwareConsumer:
    """A consumer whose offset commits raise BrokerUnavailable for a broker outage. A non-retriable commit
    error (the group rebalanced) comes through as kafka-python raised it; every other call is passed on."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        with broker_outages():
            return self._consumer.commit(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


class OutageAwareProducer:
    """A producer whose sends, flushes and acknowledgements raise BrokerUnavailable for any Kafka failure."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer

    def send(self, *args: Any, **kwargs: Any) -> _Acknowledgement:
        with broker_outages(producing=True):
            return _Acknowledgement(self._producer.send(*args, **kwargs))

    def flush(self, *args: Any, **kwargs: Any) -> None:
        with broker_outages(producing=True):
            self._producer.flush(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)


class _Acknowledgement:
    def __init__(self, future: Any) -> None:
        self._future = future

    def get(self, timeout: float | None = None) -> Any:
        with broker_outages(producing=True):
            return self._future.get(timeout=timeout)


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
