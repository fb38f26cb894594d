"""``post-sentiment`` (keyed by post_id) -> the by-channel topic (keyed by channel).

Repartitioning by channel makes one worker own all of a channel's windows, and the state table's
changelog partition the stream's partition.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.emotions import Polarity
from schemas.posts import Identifier
from schemas.results import EmotionDistribution
from workers.aggregator.detection import Observation
from workers.aggregator.metrics import AggregatorMetrics
from workers.common.logs import get_logger

log = get_logger("moodwatch.aggregator")

Send = Callable[[bytes, bytes], Awaitable[None]]
"""Sends (key, value) to the by-channel topic."""


class _ResultFields(BaseModel):
    """The AnalysisResultV1 fields the aggregator reads, validated with the contract's own types
    (the rest of the record is ignored: validating regions and evidence here cost ~3x more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1]
    post_id: Identifier
    channel: Identifier
    created_at: AwareDatetime
    polarity: Polarity
    emotions: EmotionDistribution


def decode_result(raw: bytes | None) -> Observation:
    """A post-sentiment value -> Observation; raises ValueError on anything invalid."""
    if raw is None:
        raise ValueError("tombstone")
    return Observation.from_result(_ResultFields.model_validate_json(raw))


class Repartition:
    """Decodes each result and sends its Observation on, keyed by channel; skips (and counts) invalid ones."""

    def __init__(self, send: Send, metrics: AggregatorMetrics) -> None:
        self.send = send
        self.metrics = metrics

    async def forward(self, raw: bytes | None) -> None:
        try:
            obs = decode_result(raw)
        except Exception as exc:  # noqa: BLE001 - a record that crashes the agent would crash it after every restart
            self.metrics.records.labels(source="results", outcome="invalid").inc()
            log.warning("result_invalid", error=str(exc)[:300])
            return
        self.metrics.records.labels(source="results", outcome="ok").inc()
        await self.send(obs.channel.encode(), json.dumps(obs.to_dict()).encode())
