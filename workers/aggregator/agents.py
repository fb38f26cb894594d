"""The faust side of the steps: the agents' loops, and the publish / send / apply they are given.

Every agent reports what it takes and while it is busy to ``AgentProgress`` (the stall watchdog reads it)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from faust import streams as faust_streams

from schemas.results import AlertV1
from workers.aggregator.alerts_out import alert_record
from workers.aggregator.delivery import AlertDelivery
from workers.aggregator.detection import BatchResult, MoodAggregator
from workers.aggregator.faust_fixes import GapRepair
from workers.aggregator.repartition import Repartition
from workers.aggregator.stall import AgentProgress
from workers.aggregator.step import AggregationStep

AgentFun = Callable[[Any], Awaitable[None]]


def by_channel_agent(repartition: Repartition, gaps: GapRepair, progress: AgentProgress) -> AgentFun:
    async def by_channel(stream: Any) -> None:
        async for event in stream.events():
            with progress.handling([event]):
                for value in await gaps.with_skipped([event]):
                    await repartition.forward(value)

    return by_channel


def aggregate_agent(
    step: AggregationStep, gaps: GapRepair, progress: AgentProgress, *, batch_max: int, batch_wait_s: float
) -> AgentFun:
    """Batches: writes to the same key within a batch become one changelog record. Each partition's
    part of a batch is its own step, anchored to one of its events (see ``apply_in_partition``)."""

    async def aggregate(stream: Any) -> None:
        async for events in stream.take_events(batch_max, within=batch_wait_s):
            with progress.handling(events):
                by_partition: dict[int, list[Any]] = {}
                for event in events:
                    by_partition.setdefault(event.message.partition, []).append(event)
                for partition_events in by_partition.values():
                    await step.run(await gaps.with_skipped(partition_events), anchor=partition_events[-1])

    return aggregate


def deliver_agent(delivery: AlertDelivery, progress: AgentProgress) -> AgentFun:
    async def deliver(stream: Any) -> None:
        async for event in stream.events():
            with progress.handling([event]):
                await delivery.deliver(event.value)

    return deliver


def send_forced(topic: Any) -> Callable[[bytes, bytes], Awaitable[None]]:
    async def send(key: bytes, value: bytes) -> None:
        await topic.send(key=key, value=value, force=True)

    return send


def publish_acked(topic: Any) -> Callable[[AlertV1], Awaitable[None]]:
    async def publish(alert: AlertV1) -> None:
        key, value, headers = alert_record(alert)
        sent = await topic.send(key=key, value=value, headers=headers, force=True)
        await sent  # the broker has the alert before any state of its batch is written

    return publish


def apply_in_partition(detector: MoodAggregator) -> Callable[[BatchResult, Any], None]:
    """Applies a step's writes with its anchor event as faust's current event: a table writes to the
    changelog partition of the current event, which must be the channel's stream partition."""

    def apply(result: BatchResult, event: Any) -> None:
        with _as_current_event(event):
            detector.apply(result)

    return apply


@contextlib.contextmanager
def _as_current_event(event: Any) -> Iterator[None]:
    """Only the context variable is set, never the stream's own ``current_event`` attribute, which
    the background take() buffer reads."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)
