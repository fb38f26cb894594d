"""The ``alerts`` topic -> Elasticsearch and the webhook (``AlertOutputs``), off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from workers.aggregator.alerts_out import AlertOutputMetrics, AlertOutputs, parse_alert
from workers.aggregator.metrics import AggregatorMetrics
from workers.aggregator.settings import AggregatorSettings
from workers.common.logs import get_logger

log = get_logger("moodwatch.aggregator")


class AlertDelivery:
    """Delivers each alert record; the outputs (Elasticsearch client, webhook sender) are built on the first one."""

    def __init__(
        self,
        settings: AggregatorSettings,
        metrics: AggregatorMetrics,
        *,
        make_outputs: Callable[[], AlertOutputs] | None = None,
    ) -> None:
        self.metrics = metrics
        self.make_outputs = make_outputs or (
            lambda: AlertOutputs(settings, metrics=AlertOutputMetrics.create(metrics.registry))
        )
        self.outputs: AlertOutputs | None = None

    async def deliver(self, raw: bytes | None) -> None:
        try:
            alert = parse_alert(raw)
        except Exception as exc:  # noqa: BLE001 - a bad record must not crash the agent
            self.metrics.records.labels(source="alerts", outcome="invalid").inc()
            log.warning("alert_record_invalid", error=str(exc)[:300])
            return
        if self.outputs is None:
            self.outputs = await asyncio.to_thread(self.make_outputs)
        await asyncio.to_thread(self.outputs.deliver, alert)
