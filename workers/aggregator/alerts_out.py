"""Where an AlertV1 goes: Kafka topic ``alerts``, the Elasticsearch alerts index, an optional webhook.

* Kafka: key = alert_id, value = the AlertV1 JSON, headers with kind and channel
  (:func:`alert_record`; the aggregator publishes it, :func:`publish_alert` does it with kafka-python).
* Elasticsearch: ``_id = alert_id`` through ``workers.adapters.elastic.AlertSink`` (a re-emitted alert
  overwrites the same document).
* Webhook: ``POST`` of the same JSON body, retried with exponential backoff (tenacity) on network
  errors, 408, 429 and 5xx; other 4xx are the receiver's answer and are not retried. Signed with
  ``X-Moodwatch-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes>`` when a secret is
  set, and carrying ``X-Moodwatch-Alert-Id`` (= ``Idempotency-Key``) so receivers can drop the
  duplicates that at-least-once delivery can produce. Redirects are not followed.

Receivers verify with :func:`verify_signature` (constant-time compare) over the raw body.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from pydantic import SecretStr
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from schemas.results import AlertV1
from workers.aggregator.settings import AggregatorSettings
from workers.common.logs import get_logger

log = get_logger("moodwatch.alerts")

SIGNATURE_HEADER = "X-Moodwatch-Signature"
ALERT_ID_HEADER = "X-Moodwatch-Alert-Id"
USER_AGENT = "moodwatch-alerts/1"


# --- encoding ---------------------------------------------------------------------------------


def alert_body(alert: AlertV1) -> bytes:
    """The canonical bytes of an alert: what goes to Kafka and to the webhook (and gets signed)."""
    return alert.model_dump_json().encode()


def alert_record(alert: AlertV1) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the Kafka record for an alert."""
    headers = [
        ("schema", b"AlertV1"),
        ("kind", alert.kind.encode()),
        ("channel", alert.channel.encode()),
    ]
    return alert.alert_id.encode(), alert_body(alert), headers


def parse_alert(raw: bytes | str | None) -> AlertV1:
    if raw is None:
        raise ValueError("empty alert record (tombstone)")
    return AlertV1.model_validate_json(raw)


def publish_alert(producer: Any, topic: str, alert: AlertV1) -> Any:
    """Send with a kafka-python producer; returns its future (``.get(timeout)`` waits for the ack)."""
    key, value, headers = alert_record(alert)
    return producer.send(topic, key=key, value=value, headers=headers)


def sign(body: bytes, secret: str | bytes | SecretStr) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of the body under the secret."""
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str | bytes | SecretStr, header: str | None) -> bool:
    if not header:
        return False
    return hmac.compare_digest(sign(body, secret), header.strip())


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class AlertOutputMetrics:
    deliveries: Counter
    webhook_attempts: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> AlertOutputMetrics:
        registry = registry if registry is not None else REGISTRY
        return cls(
            deliveries=Counter(
                "moodwatch_alert_deliveries",
                "Alert deliveries by target (elasticsearch, webhook) and outcome (ok, failed, skipped)",
                ["target", "outcome"],
                registry=registry,
            ),
            webhook_attempts=Counter(
                "moodwatch_alert_webhook_attempts", "Webhook HTTP attempts, retries included", registry=registry
            ),
        )


# --- webhook ----------------------------------------------------------------------------------


class WebhookError(RuntimeError):
    pass


class _Retryable(Exception):
    pass


RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class WebhookSender:
    """POSTs alerts to one URL with retries and an HMAC signature. Thread-safe (httpx.Client)."""

    def __init__(
        self,
        url: str,
        secret: SecretStr | str | None = None,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 6,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_attempt: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self._secret = SecretStr(secret) if isinstance(secret, str) else secret
        self.max_attempts = max_attempts
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._client = client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._sleep = sleep
        self._on_attempt = on_attempt

    def __repr__(self) -> str:  # never the secret
        return f"WebhookSender(url={self.url!r}, signed={self._secret is not None})"

    def headers(self, alert: AlertV1, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            ALERT_ID_HEADER: alert.alert_id,
            "Idempotency-Key": alert.alert_id,
        }
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, self._secret)
        return headers

    def send(self, alert: AlertV1) -> int:
        """Deliver one alert; returns the HTTP status. Raises WebhookError when it gave up."""
        body = alert_body(alert)
        headers = self.headers(alert, body)

        def attempt() -> int:
            if self._on_attempt:
                self._on_attempt()
            try:
                resp = self._client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as exc:  # connect / read / timeout errors
                raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
            if resp.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {resp.status_code}")
            if resp.status_code >= 300:
                raise WebhookError(f"webhook answered HTTP {resp.status_code}; not retried")
            return resp.status_code

        retrying = Retrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential_jitter(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            sleep=self._sleep,
            before_sleep=lambda state: log.warning(
                "alert_webhook_retry",
                alert_id=alert.alert_id,
                attempt=state.attempt_number,
                error=str(state.outcome.exception()) if state.outcome else None,
            ),
            reraise=False,
        )
        try:
            return retrying(attempt)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            raise WebhookError(f"webhook failed after {self.max_attempts} attempts: {last}") from last

    def close(self) -> None:
        self._client.close()


# --- the outputs together ---------------------------------------------------------------------


class AlertOutputs:
    """Elasticsearch + webhook delivery of alerts read back from the ``alerts`` topic.

    ``deliver`` never raises for a target that is down for good: it logs, counts
    ``moodwatch_alert_deliveries_total{outcome="failed"}`` and returns; the alert stays in the
    Kafka topic, the source of truth, from which it can be replayed.
    """

    def __init__(
        self,
        settings: AggregatorSettings,
        *,
        es_sink: Any | None = None,
        webhook: WebhookSender | None = None,
        metrics: AlertOutputMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.es_sink = es_sink
        if self.es_sink is None and settings.alerts_to_elasticsearch:
            from workers.adapters.elastic import AlertSink, install_templates, make_es_client

            es = make_es_client(settings)
            try:
                install_templates(es, settings)  # idempotent; the alerts index gets its strict mapping
            except Exception as exc:  # noqa: BLE001 - the store may be down now: the sink retries its writes
                log.warning("alert_templates_not_installed", error=str(exc)[:300])
            self.es_sink = AlertSink(es, settings)
        self.webhook = webhook
        if self.webhook is None and settings.alert_webhook_url:
            on_attempt = metrics.webhook_attempts.inc if metrics else None
            self.webhook = WebhookSender(
                settings.alert_webhook_url,
                settings.alert_webhook_secret,
                timeout_s=settings.alert_webhook_timeout_s,
                max_attempts=settings.alert_webhook_max_attempts,
                backoff_max_s=settings.alert_webhook_backoff_max_s,
                on_attempt=on_attempt,
            )

    def _count(self, target: str, outcome: str) -> None:
        if self.metrics:
            self.metrics.deliveries.labels(target=target, outcome=outcome).inc()

    def deliver(self, alert: AlertV1) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        if self.es_sink is not None:
            try:
                self.es_sink.write([alert])
                outcomes["elasticsearch"] = "ok"
            except Exception as exc:  # noqa: BLE001 - StoreUnavailable after its own long retry, or rejected
                log.error("alert_es_failed", alert_id=alert.alert_id, error=str(exc)[:500])
                outcomes["elasticsearch"] = "failed"
        if self.webhook is not None:
            try:
                self.webhook.send(alert)
                outcomes["webhook"] = "ok"
            except WebhookError as exc:
                log.error("alert_webhook_failed", alert_id=alert.alert_id, error=str(exc)[:500])
                outcomes["webhook"] = "failed"
        for target, outcome in outcomes.items():
            self._count(target, outcome)
        log.info("alert_delivered", alert_id=alert.alert_id, channel=alert.channel, kind=alert.kind, **outcomes)
        return outcomes

    def close(self) -> None:
        if self.webhook is not None:
            self.webhook.close()
