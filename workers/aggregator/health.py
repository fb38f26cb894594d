"""The aggregator's /metrics, /livez and /readyz endpoint, and the heartbeat that keeps /livez green
(until the stall watchdog finds the worker stalled: then /livez stays 503)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from workers.aggregator.metrics import AggregatorMetrics
from workers.aggregator.settings import AggregatorSettings
from workers.common.health import HealthState

if TYPE_CHECKING:
    from workers.common.health import HealthServer


class AggregatorHealthState(HealthState):
    """``HealthState`` that a stall makes not live for good, however recently the event loop ticked."""

    stalled: str | None = None

    def is_live(self) -> bool:
        return self.stalled is None and super().is_live()


class HealthEndpoint:
    """Owns the health state and its server; ``start`` runs as a faust task, ``heartbeat`` as a timer."""

    def __init__(self, settings: AggregatorSettings, metrics: AggregatorMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state: AggregatorHealthState | None = None
        self.server: HealthServer | None = None

    @property
    def port(self) -> int | None:
        s = self.settings
        return s.aggregator_metrics_port if s.aggregator_metrics_port is not None else s.metrics_port

    async def start(self) -> None:
        """Serve on ``port`` (0 or unset: off), with Kafka and (when alerts go there) Elasticsearch as readiness."""
        if not self.port:
            return
        from workers.common.health import serve_health, tcp_check

        s = self.settings
        state = AggregatorHealthState(stale_after_s=60)
        state.add_check("kafka", tcp_check(s.kafka_bootstrap))
        if s.alerts_to_elasticsearch:
            from workers.adapters.elastic import make_es_client, ping

            es = make_es_client(s)
            state.add_check("elasticsearch", lambda: ping(es))
        self.state = state
        self.server = serve_health(state, s.metrics_host, self.port, self.metrics.registry)

    async def heartbeat(self) -> None:
        if self.state is not None:
            self.state.tick()

    def stalled(self, reason: str) -> None:
        """The stall watchdog's verdict: /livez answers 503 from now on."""
        if self.state is not None:
            self.state.stalled = reason
