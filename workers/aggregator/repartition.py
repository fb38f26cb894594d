"""``post-sentiment`` (keyed by post_id) -> the by-channel topic (keyed by channel).

Repartitioning by channel makes one worker own all of a channel's windows, and the state table's
changelog partition the stream's partition. Event time is bounded here, once per result: a
created_at too far ahead of the time the analyzer saw the post (``analyzed_at``), or before the
floor, is replaced by ``analyzed_at`` -- deterministic on replay, and no single result can move a
channel's windows or its watermark.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.emotions import Polarity3
from schemas.posts import Identifier
from schemas.results import EmotionDistribution
from workers.aggregator.detection import Observation
from workers.aggregator.metrics import AggregatorMetrics
from workers.common.event_time import BoundedTime, EventTimeBounds
from workers.common.logs import get_logger

log = get_logger("moodwatch.aggregator")

Send = Callable[[bytes, bytes], Awaitable[None]]
"""Sends (key, value) to the by-channel topic."""


class _ResultFields(BaseModel):
    """The result fields the aggregator reads (AnalysisResultV2, or V1 from before three-way polarity),
    validated with the contract's own types (the rest of the record is ignored: validating regions and
    evidence here cost ~3x more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1, 2]
    post_id: Identifier
    channel: Identifier
    created_at: AwareDatetime
    analyzed_at: AwareDatetime
    polarity: Polarity3
    emotions: EmotionDistribution


def decode_result(raw: bytes | None, bounds: EventTimeBounds = EventTimeBounds()) -> tuple[Observation, BoundedTime]:
    """A post-sentiment value -> (Observation at its bounded event time, the bound); ValueError if invalid."""
    if raw is None:
        raise ValueError("tombstone")
    fields = _ResultFields.model_validate_json(raw)
    when = bounds.bound(fields.created_at, fields.analyzed_at)
    return Observation.from_result(fields.model_copy(update={"created_at": when.at})), when


class Repartition:
    """Decodes each result and sends its Observation on, keyed by channel; skips (and counts) invalid ones."""

    def __init__(self, send: Send, metrics: AggregatorMetrics, bounds: EventTimeBounds = EventTimeBounds()) -> None:
        self.send = send
        self.metrics = metrics
        self.bounds = bounds

    async def forward(self, raw: bytes | None) -> None:
        try:
            obs, when = decode_result(raw, self.bounds)
        except Exception as exc:  # noqa: BLE001 - a record that crashes the agent would crash it after every restart
            self.metrics.records.labels(source="results", outcome="invalid").inc()
            log.warning("result_invalid", error=str(exc)[:300])
            return
        self.metrics.records.labels(source="results", outcome="ok").inc()
        if when.clamped:
            self.metrics.event_time_clamped.labels(reason=when.reason).inc()
            log.warning("event_time_clamped", post_id=obs.post_id, channel=obs.channel, reason=when.reason)
        await self.send(obs.channel.encode(), json.dumps(obs.to_dict()).encode())
