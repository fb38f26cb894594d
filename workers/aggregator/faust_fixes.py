"""Fixes for faust 0.15.3 on tansu 0.6 (harmless on real Kafka): three ways a restart lost or repeated data.

Short end offsets. tansu answers ListOffsets(latest) with the base offset of the partition's last
record batch + 1 instead of the last offset + 1 (a fetch response's high watermark is right).
faust's table recovery reads each changelog partition up to ``end_offsets() - 1`` and then declares
the table recovered: records after the first one of the last batch stay in faust's recovery buffer
and are never applied, so a restarted worker lost the newest state changes (up to a whole producer
batch; "one record short" with a batch of two) and e.g. raised the same alert again.
``VerifiedEndTransport`` replaces faust's end offsets by reading each partition's tail from the
reported end - 1 to the real end before recovery starts (on real Kafka that read returns one record
and changes nothing). See ``verified_end_offsets``.

Resume before seek. When recovery completes, faust resumes the stream partitions and only then
seeks them to their committed offsets, while its fetcher already runs. ``SeekFirstTableManager``
seeks first.

Records fetched for a paused partition. faust hands its live, mutable set of active partitions to
the consumer thread, and aiokafka's ``fetched_records`` takes an empty set to mean *every*
partition. A fetch still waiting when table recovery ended (changelog partitions paused, stream
partitions not yet resumed: the set is empty) drained the records buffered for the stream
partitions; faust then dropped them as not active, while aiokafka's position had moved past them.
Before the seek to the committed offsets that was harmless (the seek rewinds); after it the records
were gone: the restarted worker logged "Worker ready" and never consumed its input (issue 12).
``SnapshotFetchConsumerThread`` fetches for a snapshot of the set taken when the fetch starts, and
fetches nothing for an empty one.

Skipped records. Should a stream still jump forward over offsets, ``GapRepair`` re-reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from workers.aggregator.metrics import AggregatorMetrics
from workers.common.logs import get_logger

if TYPE_CHECKING:
    from workers.aggregator.settings import AggregatorSettings

log = get_logger("moodwatch.aggregator")

__all__ = [
    "GapRepair",
    "SeekFirstTableManager",
    "SnapshotFetchTransport",
    "VerifiedEndTransport",
    "side_consumer",
    "verified_end_offsets",
]


async def verified_end_offsets(
    reported: Mapping[Any, int | None],
    make_consumer: Callable[[], Any],
    *,
    timeout_s: float = 10.0,
    on_correction: Callable[[Any, int, int], None] | None = None,
) -> dict[Any, int | None]:
    """The real end offset (last offset + 1) of each partition, whatever ListOffsets said.

    Reads every non-empty partition from ``reported - 1`` with a group-less aiokafka consumer
    until its position reaches the fetch response's high watermark; returns the max of the
    reported end, the last offset read + 1 and that high watermark. On a correct broker this
    reads one record per partition. ``make_consumer`` returns an unstarted AIOKafkaConsumer.
    """
    import aiokafka

    result: dict[Any, int | None] = dict(reported)
    todo = {tp: end for tp, end in reported.items() if end}
    if not todo:
        return result
    # aiokafka insists on its own TopicPartition type; faust's TP is a look-alike
    native = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp in todo}
    consumer = make_consumer()
    await consumer.start()
    try:
        consumer.assign(list(native))
        for atp, tp in native.items():
            consumer.seek(atp, max(0, todo[tp] - 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(native)
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for atp, messages in batches.items():
                if messages:
                    tp = native[atp]
                    result[tp] = max(result[tp] or 0, messages[-1].offset + 1)
            for atp in list(pending):
                tp = native[atp]
                hw = consumer.highwater(atp)
                if hw is None:
                    continue
                result[tp] = max(result[tp] or 0, hw)
                if await consumer.position(atp) >= result[tp]:
                    pending.discard(atp)
        if pending:
            log.warning("end_offset_probe_timeout", partitions=sorted(str(native[atp]) for atp in pending))
    finally:
        await consumer.stop()
    for tp, end in todo.items():
        if (result[tp] or 0) > end:
            log.info("end_offset_corrected", topic=tp.topic, partition=tp.partition, reported=end, actual=result[tp])
            if on_correction:
                on_correction(tp, end, result[tp])
    return result


def side_consumer(app: Any, purpose: str) -> Any:
    """An unstarted, group-less AIOKafkaConsumer on the app's brokers and credentials."""
    import aiokafka

    conf = app.conf
    auth = faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
    transport = app.transport
    return aiokafka.AIOKafkaConsumer(
        bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{conf.broker_client_id}-{purpose}",
        isolation_level="read_uncommitted",
        **auth,
    )


class GapRepair:
    """Re-reads the records a faust stream skipped.

    faust 0.15.3 resumes the stream partitions *before* seeking them to the committed offsets when
    recovery completes (and the fetcher is already running then); in ~1 of 5 restarts on this
    machine the agent then saw an offset jump forward (e.g. 537 -> 539) and the skipped record was
    never delivered: a lost post. Our topics are neither compacted nor transactional, so within a
    partition every offset exists; a forward jump is a skip. This fetches the skipped range with a
    group-less consumer so the agent can process it before the record that revealed the jump
    (re-deliveries, i.e. backward jumps, are harmless: posts are deduplicated by post_id).
    """

    def __init__(self, app: Any, metrics: AggregatorMetrics, role: str, *, timeout_s: float = 10.0) -> None:
        self.app = app
        self.metrics = metrics
        self.role = role
        self.timeout_s = timeout_s
        self.last: dict[Any, int] = {}
        self._consumer: Any = None

    def gap(self, tp: Any, offset: int) -> tuple[int, int] | None:
        """Record ``offset`` as delivered; return the skipped range [start, stop) if it jumped."""
        prev = self.last.get(tp)
        if prev is None or offset > prev:
            self.last[tp] = offset
        if prev is not None and offset > prev + 1:
            return prev + 1, offset
        if prev is not None and offset <= prev:
            self.metrics.redeliveries.labels(source=self.role).inc()
        return None

    async def fetch(self, tp: Any, start: int, stop: int) -> list[Any]:
        self.metrics.offset_jumps.labels(source=self.role).inc()
        log.warning(
            "offset_jump_repair", source=self.role, topic=tp.topic, partition=tp.partition, start=start, stop=stop
        )
        if self._consumer is None:
            self._consumer = side_consumer(self.app, f"gap-{self.role}")
            await self._consumer.start()
        import aiokafka

        consumer = self._consumer
        atp = aiokafka.TopicPartition(tp.topic, tp.partition)  # faust's TP is not aiokafka's
        consumer.assign([atp])
        consumer.seek(atp, start)
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while loop.time() < deadline:
            batch = await consumer.getmany(atp, timeout_ms=200)
            for message in batch.get(atp, []):
                if start <= message.offset < stop:
                    out.append(message)
            if (out and out[-1].offset >= stop - 1) or await consumer.position(atp) >= stop:
                break
        missing = (stop - start) - len(out)
        if missing:
            log.error("offset_jump_unrepaired", source=self.role, partition=tp.partition, missing=missing)
        self.metrics.repaired.labels(source=self.role).inc(len(out))
        return out

    async def with_skipped(self, events: Iterable[Any]) -> list[bytes | None]:
        """The values of ``events`` in offset order, each preceded by the records skipped before it."""
        values: list[bytes | None] = []
        for event in sorted(events, key=lambda e: e.message.offset):
            gap = self.gap(event.message.tp, event.message.offset)
            if gap is not None:
                values.extend(m.value for m in await self.fetch(event.message.tp, *gap))
            values.append(event.value)
        return values

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class SnapshotFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread, fetching only for the partitions active when the fetch starts.

    faust passes ``Consumer._active_partitions`` itself, which the event loop keeps changing while
    the fetch waits in this thread (up to a second), and aiokafka reads an empty set as "all
    partitions"; records it returns for a partition faust does not consider active are dropped
    after aiokafka's position has passed them. A frozen copy, and no fetch for an empty one, keep
    the records of a paused partition buffered until it is resumed.
    """

    async def getmany(self, active_partitions: set[TP] | None, timeout: float) -> Mapping[TP, list[Any]]:
        if active_partitions is None:  # a client-only app reads every partition
            return await super().getmany(active_partitions, timeout)
        snapshot = frozenset(active_partitions)
        if not snapshot:
            return {}
        return await super().getmany(snapshot, timeout)  # type: ignore[arg-type]


class SnapshotFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return SnapshotFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class SnapshotFetchTransport(faust_aiokafka.Transport):
    Consumer = SnapshotFetchConsumer


class VerifiedEndConsumerThread(SnapshotFetchConsumerThread):
    """``SnapshotFetchConsumerThread`` whose ``highwaters`` (used by table recovery) are verified."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        app = self.app
        settings: AggregatorSettings = app.moodwatch_settings  # type: ignore[attr-defined]
        metrics: AggregatorMetrics | None = getattr(app, "moodwatch_metrics", None)

        def corrected(tp: Any, was: int, now: int) -> None:
            if metrics:
                metrics.end_offset_corrections.inc()

        return await verified_end_offsets(
            reported,
            lambda: side_consumer(app, "end-probe"),
            timeout_s=settings.aggregator_end_offset_probe_timeout_s,
            on_correction=corrected,
        )  # type: ignore[return-value]


class VerifiedEndConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return VerifiedEndConsumerThread(self, loop=self.loop, beacon=self.beacon)


class VerifiedEndTransport(faust_aiokafka.Transport):
    Consumer = VerifiedEndConsumer


class SeekFirstRecovery(Recovery):
    """faust's Recovery, but stream partitions are seeked to their committed offsets *before* they
    are resumed (faust 0.15.3 resumes first, while its fetcher already runs, then seeks)."""

    async def _seek_then_resume(self, coro_fn: Callable[[], Any]) -> Any:
        consumer = self.app.consumer
        deferred: list[set] = []
        original_resume, original_seek = consumer.resume_partitions, consumer.perform_seek

        def resume_later(tps: Any) -> None:
            deferred.append(set(tps))

        async def seek_then_resume() -> None:
            await original_seek()
            while deferred:
                original_resume(deferred.pop(0))

        consumer.resume_partitions = resume_later  # type: ignore[method-assign]
        consumer.perform_seek = seek_then_resume  # type: ignore[method-assign]
        try:
            return await coro_fn()
        finally:
            del consumer.resume_partitions, consumer.perform_seek  # back to the class methods
            while deferred:  # e.g. an empty assignment: nothing was seeked
                original_resume(deferred.pop(0))

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await self._seek_then_resume(lambda: super(SeekFirstRecovery, self).on_recovery_completed(generation_id))

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self._seek_then_resume(lambda: super(SeekFirstRecovery, self)._resume_streams(generation_id))


class SeekFirstTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
