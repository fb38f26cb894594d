"""The aggregator's stall watchdog without a broker (a fake consumer view, a fake clock), and the fetch
snapshot that fixed the stall of issue 12."""

from __future__ import annotations

import asyncio
from collections import namedtuple
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest
from structlog.testing import capture_logs

from workers.aggregator.faust_fixes import SnapshotFetchConsumerThread
from workers.aggregator.health import AggregatorHealthState
from workers.aggregator.metrics import AggregatorMetrics
from workers.aggregator.stall import STALL_EXIT_CODE, AgentProgress, StallJudge, StallWatchdog

TP = namedtuple("TP", "topic partition")  # faust's TP is a namedtuple of the same shape
RESULTS, ALERTS = TP("results", 0), TP("alerts", 0)
LIMIT = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeView:
    """A consumer: assignment, committed offsets and end offsets set by the test; the calls are counted."""

    def __init__(self) -> None:
        self.is_ready = True
        self.assignment = {RESULTS, ALERTS}
        self.committed_offsets = {RESULTS: 100, ALERTS: 5}
        self.ends = {RESULTS: 100, ALERTS: 5}
        self.starts = {RESULTS: 0, ALERTS: 0}
        self.down = False  # the broker: end offsets raise
        self.end_calls: list[set] = []

    def ready(self) -> bool:
        return self.is_ready

    def assigned(self) -> set:
        return set(self.assignment)

    def committed(self, tp):
        return self.committed_offsets.get(tp)

    async def end_offsets(self, tps):
        self.end_calls.append(set(tps))
        if self.down:
            raise ConnectionError("broker down")
        return {tp: self.ends[tp] for tp in tps}

    async def beginning_offsets(self, tps):
        return {tp: self.starts[tp] for tp in tps}

    def describe(self):
        return {"active": []}


class Harness:
    def __init__(self, limit: float = LIMIT) -> None:
        self.clock, self.view, self.progress = Clock(), FakeView(), AgentProgress()
        self.metrics = AggregatorMetrics.create()
        self.exits: list[int] = []
        self.health = AggregatorHealthState(stale_after_s=60, clock=self.clock)
        self.watchdog = StallWatchdog(
            self.view, self.progress, limit, metrics=self.metrics, clock=self.clock,
            on_stall=lambda reason: setattr(self.health, "stalled", reason), exit=self.exits.append,
        )  # fmt: skip

    def look(self, after_s: float = 0.0):
        self.clock.now += after_s
        self.health.tick()  # the event loop runs: only a stall makes /livez fail
        return asyncio.run(self.watchdog.check())

    def take(self, tp, offset: int) -> None:
        with self.progress.handling([event(tp, offset)]):
            pass

    def metric(self, name: str) -> float:
        for line in generate_latest(self.metrics.registry).decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise AssertionError(name)


def event(tp, offset: int):
    return SimpleNamespace(message=SimpleNamespace(tp=tp, offset=offset))


def looks_until(h: Harness, seconds: float, step: float = 5.0) -> None:
    for _ in range(int(seconds / step)):
        h.look(step)


# ---- the decision ------------------------------------------------------------------------------


def test_records_waiting_untaken_for_the_limit_is_a_stall_not_before():
    h = Harness()
    h.look()  # first look: the partitions are registered
    h.view.ends[RESULTS] = 150  # records arrive; the agents take none
    waiting = h.look(5)
    assert [(w.tp, w.lag, w.waited_s) for w in waiting] == [(RESULTS, 50, 0.0)]
    looks_until(h, LIMIT - 5)
    assert h.exits == [] and h.health.is_live()
    assert h.metric("moodwatch_aggregator_stalled_seconds") == LIMIT - 5
    h.look(5)
    assert h.exits == [STALL_EXIT_CODE]
    assert not h.health.is_live(), "/livez turns 503 before the exit"
    assert h.metric("moodwatch_aggregator_stall_exits_total") == 1


def test_the_stall_is_logged_once_with_the_partitions_and_the_consumer_state():
    h = Harness()
    h.look()
    h.view.ends[RESULTS] = 150
    with capture_logs() as logs:
        looks_until(h, LIMIT + 5)
    errors = [e for e in logs if e["log_level"] == "error"]
    assert len(errors) == 1
    (line,) = errors
    assert "stalled" in line["event"] and line["exit_code"] == 75 and line["stall_exit_s"] == LIMIT
    assert line["partitions"] == [f"results:0 lag=50 waited_s={LIMIT:.1f}"]
    assert line["consumer"] == {"active": []}


def test_a_partition_whose_agent_takes_records_is_not_stalled():
    h = Harness()
    h.look()
    h.view.ends[RESULTS] = 10_000  # a big backlog, taken slowly
    for offset in range(100, 100 + int(3 * LIMIT / 5)):
        h.take(RESULTS, offset)
        h.look(5)
    assert h.exits == [] and h.metric("moodwatch_aggregator_stalled_seconds") == 0


def test_a_busy_agent_is_slow_not_stalled():
    """A webhook retrying one alert for minutes holds the deliver agent; its partition waits meanwhile."""
    h = Harness()
    h.look()
    h.view.ends[ALERTS] = 7
    with h.progress.handling([event(ALERTS, 5)]):
        looks_until(h, 3 * LIMIT)
    assert h.exits == []


def test_no_lag_is_idle_not_stalled_and_the_offsets_are_read_only_for_partitions_without_progress():
    h = Harness()
    h.look()
    looks_until(h, 3 * LIMIT)
    assert h.exits == []
    h.view.end_calls.clear()
    h.take(RESULTS, 100)
    h.look(5)
    assert h.view.end_calls == [{ALERTS}], "results made progress: no need to read its end offset"


def test_a_broker_outage_is_not_a_stall():
    """No lag measurable, no exit; and the clock starts again when the broker is back."""
    h = Harness()
    h.look()
    h.view.ends[RESULTS] = 150
    looks_until(h, LIMIT - 10)
    h.view.down = True
    looks_until(h, 3 * LIMIT)
    assert h.exits == [] and h.metric("moodwatch_aggregator_stalled_seconds") == 0
    h.view.down = False
    looks_until(h, LIMIT - 5)
    assert h.exits == []
    looks_until(h, 10)
    assert h.exits == [STALL_EXIT_CODE]


def test_short_end_offsets_never_invent_lag():
    """tansu answers start of the last batch + 1: an end below the position is no lag (and no exit)."""
    h = Harness()
    h.look()
    h.take(RESULTS, 120)  # the agent is inside the last batch, 100..140
    h.view.ends[RESULTS] = 101
    looks_until(h, 3 * LIMIT)
    assert h.exits == []


def test_the_position_is_the_offset_after_the_last_record_taken_or_the_committed_one():
    h = Harness()
    h.look()
    h.take(RESULTS, 129)  # taken, not committed yet
    h.look(5)
    h.view.ends[RESULTS] = 130
    looks_until(h, 3 * LIMIT)
    assert h.exits == [], "everything up to the end was taken"
    h.view.ends[RESULTS] = 131
    looks_until(h, LIMIT + 5)
    assert h.exits == [STALL_EXIT_CODE]


def test_without_committed_offset_or_records_taken_the_agents_start_from_the_beginning():
    h = Harness()
    h.view.committed_offsets = {}
    h.view.ends = {RESULTS: 40, ALERTS: 0}
    h.view.starts = {RESULTS: 30, ALERTS: 0}  # retention removed 0..29
    h.look()
    waiting = h.look(5)
    assert [(w.tp, w.lag) for w in waiting] == [(RESULTS, 10)]


def test_not_ready_is_not_stalled_and_readiness_starts_the_clock_again():
    """A rebalance or table recovery pauses the streams: their records wait, by design."""
    h = Harness()
    h.view.ends[RESULTS] = 150
    h.view.is_ready = False
    looks_until(h, 3 * LIMIT)
    assert h.exits == [] and h.view.end_calls == []
    h.view.is_ready = True
    looks_until(h, LIMIT)
    assert h.exits == []
    looks_until(h, 10)
    assert h.exits == [STALL_EXIT_CODE]


def test_revoked_partitions_are_forgotten():
    h = Harness()
    h.look()
    h.view.ends[RESULTS] = 150
    looks_until(h, LIMIT - 5)
    h.view.assignment = {ALERTS}
    looks_until(h, LIMIT)
    assert h.exits == []
    h.view.assignment = {RESULTS, ALERTS}
    looks_until(h, LIMIT)
    assert h.exits == [], "the clock of a partition assigned again starts from zero"


def test_judge_is_pure_bookkeeping():
    judge = StallJudge(10)
    assert judge.suspects({RESULTS: (0, False)}) == set()  # first look
    assert judge.suspects({RESULTS: (0, False)}) == {RESULTS}
    assert judge.judge(100.0, {RESULTS: 3}) == {RESULTS: 0.0}
    assert judge.suspects({RESULTS: (0, False)}) == {RESULTS}
    assert judge.judge(110.0, {RESULTS: 3}) == {RESULTS: 10.0}
    assert judge.stalled({RESULTS: 10.0}) and not judge.stalled({RESULTS: 9.9})
    assert judge.suspects({RESULTS: (1, False)}) == set()
    assert judge.judge(111.0, {}) == {}


def test_the_check_interval_fits_the_limit():
    assert Harness(90).watchdog.interval_s == 5.0
    assert Harness(6).watchdog.interval_s == 1.0


# ---- the fetch snapshot (the cause of the stall) -----------------------------------------------


class CapturingThread:
    """``SnapshotFetchConsumerThread`` without a consumer: what would be fetched for is captured."""

    def __init__(self) -> None:
        self.thread = object.__new__(SnapshotFetchConsumerThread)
        self.thread._consumer = SimpleNamespace(_max_poll_records=500)
        self.fetched_for: list = []

        async def call_thread(fun, consumer, active_partitions, **kwargs):
            self.fetched_for.append(active_partitions)
            return {}

        self.thread.call_thread = call_thread

    def getmany(self, partitions):
        return asyncio.run(self.thread.getmany(partitions, 1.0))


def test_the_fetch_is_for_the_partitions_active_when_it_starts():
    """faust passes its live set of active partitions; the consumer thread must not see it change."""
    capture = CapturingThread()
    active = {TP("changelog", 0)}
    capture.getmany(active)
    active.clear()  # recovery done: the changelog is paused while the fetch may still be waiting
    active.add(RESULTS)
    assert capture.fetched_for == [frozenset({TP("changelog", 0)})]


@pytest.mark.parametrize("partitions", [set(), frozenset()])
def test_no_fetch_for_no_active_partition(partitions):
    """aiokafka reads an empty set as every partition: the records of paused ones would be drained and lost."""
    capture = CapturingThread()
    assert capture.getmany(partitions) == {}
    assert capture.fetched_for == []


def test_a_client_only_app_still_fetches_everything():
    capture = CapturingThread()
    capture.getmany(None)
    assert capture.fetched_for == [None]


def test_a_failing_look_is_logged_and_never_stops_the_worker():
    h = Harness()

    def broken():
        raise RuntimeError("consumer not started")

    h.view.assigned = broken
    with capture_logs() as logs:
        assert h.look(5) == []
    assert h.exits == [] and [e["event"] for e in logs] == ["stall_watch_failed"]
