"""One aggregation step: a batch of by-channel records -> windows, detection, alerts, state writes.

The order is what makes a crash safe: the alerts of a batch are published (and acknowledged) before
any of its state writes are applied, so a crash in between re-processes the batch and re-raises the
same alerts (same ``alert_id``) instead of losing them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from schemas.results import AlertV1
from workers.aggregator.detection import BatchResult, MoodAggregator, Observation
from workers.aggregator.metrics import AggregatorMetrics
from workers.common.logs import get_logger

log = get_logger("moodwatch.aggregator")

Publish = Callable[[AlertV1], Awaitable[None]]
"""Publishes an alert; returns once the broker has it."""

Apply = Callable[[BatchResult, Any], None]
"""Stores a batch's state writes; the second argument is the ``anchor`` given to ``AggregationStep.run``."""


class AggregationStep:
    """Decode, detect, publish, apply; how to publish and apply (and the clock) are given, not assumed."""

    def __init__(
        self,
        detector: MoodAggregator,
        *,
        publish: Publish,
        apply: Apply,
        metrics: AggregatorMetrics,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.detector = detector
        self.publish = publish
        self.apply = apply
        self.metrics = metrics
        self.clock = clock
        self.newest_event_time = 0.0

    async def run(self, values: Iterable[bytes | None], anchor: Any = None) -> BatchResult | None:
        """Process ``values`` (one stream partition's, in offset order); None when none was valid.

        ``anchor`` is handed to ``apply`` as is (the worker passes an event of the partition, so the
        table writes go to that partition's changelog).
        """
        observations = self._decode(values)
        if not observations:
            return None
        t0 = self.clock()
        result = self.detector.process_many(observations)
        for alert in result.alerts:
            await self.publish(alert)
            self.metrics.alerts.labels(kind=alert.kind).inc()
            log.warning(
                "alert_raised", alert_id=alert.alert_id, channel=alert.channel, kind=alert.kind,
                window_start=alert.window_start.isoformat(), p_value=alert.p_value, message=alert.message,
            )  # fmt: skip
        self.apply(result, anchor)
        for status, n in result.statuses.items():
            self.metrics.observations.labels(status=status).inc(n)
        self.metrics.step_duration.observe((self.clock() - t0) / len(observations))
        self.metrics.state_writes.inc(len(result.writes))
        newest = max(o.ts for o in observations)
        if newest > self.newest_event_time:
            self.newest_event_time = newest
            self.metrics.watermark.set(newest)
        return result

    def _decode(self, values: Iterable[bytes | None]) -> list[Observation]:
        observations = []
        for value in values:
            try:
                observations.append(Observation.from_dict(json.loads(value)))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - a bad record must not crash the agent
                self.metrics.records.labels(source="by_channel", outcome="invalid").inc()
                log.warning("observation_invalid", error=str(exc)[:300])
        return observations
