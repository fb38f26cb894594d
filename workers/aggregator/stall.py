"""The stall watchdog: the aggregator is ready, its agents take nothing, records wait -> not live, exit 75.

A faust worker can be ready (recovered, partitions assigned) with a ticking event loop, so a green
/livez, and still consume nothing: a stream partition that is never fetched again leaves its records
waiting for good, and faust does not notice (see ``faust_fixes.SnapshotFetchConsumerThread`` for
one way that happened). This watchdog compares, per input partition, what the agents took with what
is waiting:

- progress: an agent received a record of the partition (``AgentProgress``), or is busy handling
  one (a webhook retrying an alert for minutes is slow, not stalled);
- waiting: the partition's end offset is beyond its position, the offset after the last record an
  agent received (or the committed offset when none was received since the assignment).

A partition with records waiting and no progress for ``aggregator_stall_exit_s`` is a stall: /livez
turns not-live, one error line is logged, ``moodwatch_aggregator_stall_exits_total`` counts it and
the process exits with 75 (EX_TEMPFAIL) for its supervisor to restart it. The restart resumes from
the committed offsets: nothing after them was committed, so nothing is lost, and posts read again
are deduplicated by post_id.

The lag check is cheap and errs towards "not stalled": it runs only for partitions that made no
progress since the previous check, as one ListOffsets request from a group-less side consumer (not
faust's consumer, which may be what is stuck). End offsets that cannot be read (a broker outage)
reset the clocks, and short ones (tansu answers start of the last batch + 1) can only hide lag,
never invent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from workers.aggregator.metrics import AggregatorMetrics
from workers.common.logs import get_logger

log = get_logger("moodwatch.aggregator")

__all__ = [
    "STALL_EXIT_CODE",
    "AgentProgress",
    "ConsumerView",
    "FaustConsumerView",
    "StallJudge",
    "StallWatchdog",
    "exit_process",
]

STALL_EXIT_CODE = 75  # EX_TEMPFAIL: restart me


class AgentProgress:
    """What the agents took, per partition. An agent wraps the handling of its events in ``handling``."""

    def __init__(self) -> None:
        self.taken: Counter[Any] = Counter()  # partition -> records received (any change is progress)
        self.next_offset: dict[Any, int] = {}  # partition -> offset after the last record received
        self._busy: Counter[str] = Counter()  # topic -> handlers running

    @contextlib.contextmanager
    def handling(self, events: Iterable[Any]) -> Iterator[None]:
        topics = []
        for event in events:
            tp, offset = event.message.tp, event.message.offset
            self.taken[tp] += 1
            self.next_offset[tp] = offset + 1
            topics.append(tp.topic)
        for topic in topics:
            self._busy[topic] += 1
        try:
            yield
        finally:
            for topic in topics:
                self._busy[topic] -= 1

    def busy(self, topic: str) -> bool:
        return self._busy[topic] > 0


class StallJudge:
    """The decision, without I/O: since when has each partition had records waiting and no progress."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._seen: dict[Any, int] = {}  # partition -> progress at the previous look
        self._since: dict[Any, float] = {}  # partition -> first look that found records waiting, no progress

    def reset(self) -> None:
        self._seen.clear()
        self._since.clear()

    def suspects(self, progress: Mapping[Any, tuple[int, bool]]) -> set[Any]:
        """The partitions (of ``progress``: partition -> (records taken, busy)) without progress since
        the previous look, whose agent is idle. The others' clocks stop; partitions not given are forgotten."""
        suspects = set()
        for tp, (taken, busy) in progress.items():
            moved = self._seen.get(tp) != taken
            self._seen[tp] = taken
            if moved or busy:
                self._since.pop(tp, None)
            else:
                suspects.add(tp)
        for tp in set(self._seen) - set(progress):
            del self._seen[tp]
            self._since.pop(tp, None)
        return suspects

    def judge(self, now: float, lags: Mapping[Any, int | None]) -> dict[Any, float]:
        """Given the suspects' lags (None: not measurable), the seconds each partition has waited so far."""
        for tp, lag in lags.items():
            if lag is not None and lag > 0:
                self._since.setdefault(tp, now)
            else:
                self._since.pop(tp, None)
        for tp in set(self._since) - set(lags):
            del self._since[tp]
        return {tp: now - since for tp, since in self._since.items()}

    def stalled(self, waited: Mapping[Any, float]) -> bool:
        return any(seconds >= self.limit_s for seconds in waited.values())


class ConsumerView(Protocol):
    """What the watchdog needs to know of the consumer (faust's in the worker, a fake in tests)."""

    def ready(self) -> bool: ...

    def assigned(self) -> set[Any]: ...

    def committed(self, tp: Any) -> int | None: ...

    async def end_offsets(self, tps: set[Any]) -> Mapping[Any, int]: ...

    async def beginning_offsets(self, tps: set[Any]) -> Mapping[Any, int]: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Waiting:
    tp: Any
    lag: int
    waited_s: float

    def __str__(self) -> str:
        return f"{self.tp.topic}:{self.tp.partition} lag={self.lag} waited_s={self.waited_s:.1f}"


def exit_process(code: int) -> None:
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)  # a stuck consumer can hold up a clean shutdown forever; the restart re-reads what is uncommitted


class StallWatchdog:
    """``check`` runs every ``interval_s`` (a faust timer); on a stall: ``on_stall`` (health not live), exit 75."""

    def __init__(
        self,
        view: ConsumerView,
        progress: AgentProgress,
        limit_s: float,
        *,
        metrics: AggregatorMetrics,
        on_stall: Callable[[str], None] = lambda reason: None,
        exit: Callable[[int], None] = exit_process,
        clock: Callable[[], float] = time.monotonic,
        offsets_timeout_s: float = 10.0,
    ) -> None:
        self.view = view
        self.progress = progress
        self.judge = StallJudge(limit_s)
        self.metrics = metrics
        self.on_stall = on_stall
        self.exit = exit
        self.clock = clock
        self.offsets_timeout_s = offsets_timeout_s

    @property
    def interval_s(self) -> float:
        return min(5.0, max(0.2, self.judge.limit_s / 6))

    async def check(self) -> list[Waiting]:
        """One look: the partitions with records waiting and no progress (exits when one waited too long)."""
        try:
            return await self._check()
        except Exception as exc:  # noqa: BLE001 - the watchdog must never be what stops the worker
            log.warning("stall_watch_failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return []

    async def _check(self) -> list[Waiting]:
        if not self.view.ready():
            self.judge.reset()
            self.metrics.stalled_seconds.set(0)
            return []
        progress = self.progress
        suspects = self.judge.suspects(
            {tp: (progress.taken[tp], progress.busy(tp.topic)) for tp in self.view.assigned()}
        )
        lags = await self._lags_of(suspects) if suspects else {}
        waited = self.judge.judge(self.clock(), lags)
        self.metrics.stalled_seconds.set(max(waited.values(), default=0.0))
        waiting = sorted((Waiting(tp, lags[tp] or 0, s) for tp, s in waited.items()), key=lambda w: -w.waited_s)
        if self.judge.stalled(waited):
            self._stalled(waiting)
        return waiting

    async def _lags_of(self, tps: set[Any]) -> dict[Any, int | None]:
        """Records waiting per partition (end offset - position); all None when the offsets cannot be read."""
        unknown: dict[Any, int | None] = dict.fromkeys(tps)
        positions: dict[Any, int | None] = {}
        for tp in tps:
            known = [p for p in (self.view.committed(tp), self.progress.next_offset.get(tp)) if p is not None]
            positions[tp] = max(known) if known else None
        try:
            ends = await asyncio.wait_for(self.view.end_offsets(tps), self.offsets_timeout_s)
            missing = {tp for tp, p in positions.items() if p is None}
            if missing:  # nothing committed or received yet: the agents start from the beginning
                starts = await asyncio.wait_for(self.view.beginning_offsets(missing), self.offsets_timeout_s)
                positions.update({tp: starts.get(tp) for tp in missing})
        except Exception as exc:  # noqa: BLE001 - a broker outage is not a stall: no lag, no exit
            log.debug("stall_watch_offsets_unavailable", error=f"{type(exc).__name__}: {exc}"[:300])
            return unknown
        lags: dict[Any, int | None] = {}
        for tp in tps:
            end, position = ends.get(tp), positions.get(tp)
            lags[tp] = None if end is None or position is None else max(0, end - position)
        return lags

    def _stalled(self, waiting: list[Waiting]) -> None:
        limit = self.judge.limit_s
        reason = f"no records taken for {limit:g}s from partitions with records waiting"
        self.on_stall(reason)
        self.metrics.stall_exits.inc()
        log.error(
            "aggregator stalled: records are waiting but the agents take none; exiting for a restart "
            "(it resumes from the committed offsets)",
            partitions=[str(w) for w in waiting], stall_exit_s=limit, exit_code=STALL_EXIT_CODE,
            consumer=self.view.describe(),
        )  # fmt: skip
        self.exit(STALL_EXIT_CODE)


class FaustConsumerView:
    """``ConsumerView`` of a running faust app for the partitions of ``topics``; end offsets from a side consumer."""

    def __init__(self, app: Any, topics: Iterable[str], make_consumer: Callable[[], Any]) -> None:
        self.app = app
        self.topics = frozenset(topics)
        self.make_consumer = make_consumer
        self._consumer: Any = None

    def ready(self) -> bool:
        app = self.app
        try:
            assigned = bool(app.consumer.assignment())
        except Exception:  # noqa: BLE001 - not started yet
            return False
        return assigned and not app.rebalancing and not app.in_recovery and bool(app.tables.actives_ready)

    def assigned(self) -> set[Any]:
        return {tp for tp in self.app.consumer.assignment() if tp.topic in self.topics}

    def committed(self, tp: Any) -> int | None:
        return self.app.consumer._committed_offset.get(tp)  # set when seeking to committed and on every commit

    def _fetched_highwater(self, tp: Any) -> int | None:
        """The high watermark of faust's last fetch response (right on tansu, only ever behind the real end)."""
        with contextlib.suppress(Exception):
            return self.app.consumer.highwater(tp)
        return None

    async def _side(self) -> Any:
        if self._consumer is None:
            consumer = self.make_consumer()
            try:
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await consumer.stop()
                raise
            self._consumer = consumer
        return self._consumer

    async def end_offsets(self, tps: set[Any]) -> Mapping[Any, int]:
        import aiokafka

        native = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        reported = await (await self._side()).end_offsets(list(native))
        ends = {}
        for atp, tp in native.items():
            known = [e for e in (reported.get(atp), self._fetched_highwater(tp)) if e is not None]
            if known:
                ends[tp] = max(known)
        return ends

    async def beginning_offsets(self, tps: set[Any]) -> Mapping[Any, int]:
        import aiokafka

        native = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp in tps}
        starts = await (await self._side()).beginning_offsets(list(native))
        return {native[atp]: offset for atp, offset in starts.items()}

    def describe(self) -> dict[str, Any]:
        """Consumer state worth having in the stall's log line (what is active, paused, buffered)."""
        consumer = self.app.consumer

        def names(tps: Iterable[Any]) -> list[str]:
            return sorted(f"{tp.topic}:{tp.partition}" for tp in tps if tp.topic in self.topics)

        try:
            return {
                "flow_active": consumer.flow_active,
                "active": names(consumer._active_partitions or ()),
                "paused": names(consumer._paused_partitions),
                "buffered": names(consumer._buffered_partitions),
            }
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not stop the exit
            return {"error": str(exc)[:200]}

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()
