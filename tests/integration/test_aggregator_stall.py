"""The aggregator's stall watchdog and the stall of issue 12, on tansu + noida-db with real worker processes.

Issue 12: after a restart the aggregator logged "Worker ready" and then consumed nothing, and nothing
noticed. The cause: a fetch still waiting when table recovery ended took the records of the input
partition (faust passed its live set of active partitions, empty at that moment, and aiokafka reads
an empty set as "all"); faust dropped them as not active, after the seek to the committed offsets,
so they were never fetched again (fixed by faust_fixes.SnapshotFetchConsumerThread).

- The watchdog: a worker that never resumes its input partition (chaos) must exit with 75 within
  MOODWATCH_AGGREGATOR_STALL_EXIT_S, and the restarted worker must process every post once, with
  one alert (no repeat, none lost).
- The cause: a worker whose seek to the committed offsets is slow (chaos: the window in which the
  stray fetch took the records, made wide) must still take every record after its restart.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from tests.integration.test_aggregator import (
    Aggregator,
    Webhook,
    check_one_alert,
    metric_value,
    processed,
    produce,
    read_alerts,
    settings_for,
    stream,
    trigger_index,
    wait_for,
)
from tests.support.chaos_aggregator import FETCH_WAIT_ENV, NEVER_RESUME_ENV, SLOW_SEEK_ENV

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STALL_S = 10.0  # the watchdog's limit in the stall test; the restart test keeps 30 s, well clear of its chaos
CHAOS = "tests.support.chaos_aggregator"
ACCEPTED = 'moodwatch_aggregator_observations_total{status="accepted"}'


@pytest.fixture
def setup(tansu, noida, tmp_path):
    """``setup(stall_s)`` -> (settings, webhook, tmp): fresh topics and group, the watchdog's limit set."""
    hooks = []

    def make(stall_s: float):
        hooks.append(hook := Webhook())
        settings = settings_for(tansu, noida, tmp_path, uuid.uuid4().hex[:8], hook.url, aggregator_stall_exit_s=stall_s)
        tansu.create_topics([settings.results_topic], partitions=1)  # one partition: the order is known
        tansu.create_topics([settings.alerts_topic], partitions=settings.aggregator_partitions)
        return settings, hook, tmp_path

    yield make
    for hook in hooks:
        hook.shutdown()


def committed(settings, topic: str, partitions: int) -> int:
    """Offsets of ``topic`` the aggregator's group has committed, summed over its partitions."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.aggregator_app_id,
                             enable_auto_commit=False)  # fmt: skip
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions))
    finally:
        consumer.close(autocommit=False)


def phase_one(settings, hook, tmp, results) -> int:
    """A plain aggregator processes the posts up to the alert, delivers it, commits, stops; the rest is produced."""
    cut = trigger_index(settings, results) + 1
    produce(settings, results[:cut])
    agg = Aggregator(settings, tmp / "aggregator.log").start()
    try:
        wait_for(lambda: processed(settings) >= cut, 120, "phase 1 processed", agg)
        wait_for(lambda: committed(settings, settings.results_topic, 1) >= cut, 30, "phase 1 committed", agg)
        wait_for(lambda: len(hook.calls) >= 2, 30, "the webhook delivery", agg)
    finally:
        code = agg.stop()
    assert code == 0, agg.log_tail()
    produce(settings, results[cut:])
    return cut


def wait_until_all_taken(settings, agg: Aggregator, total: int, timeout: float = 120) -> str:
    """Every post forwarded and aggregated, every alert delivered; returns the metrics then."""
    alerts_topic_partitions = settings.aggregator_partitions
    wait_for(lambda: committed(settings, settings.results_topic, 1) >= total, timeout,
             "the results taken", agg)  # fmt: skip
    wait_for(lambda: processed(settings) >= total, timeout, "the by-channel records aggregated", agg)
    wait_for(lambda: committed(settings, settings.alerts_topic, alerts_topic_partitions) >= len(read_alerts(settings)),
             30, "the alerts delivered", agg)  # fmt: skip
    return agg.metrics()


def test_a_ready_aggregator_that_takes_nothing_exits_75_and_its_restart_processes_everything_once(setup):
    settings, hook, tmp = setup(STALL_S)
    results = stream()
    cut = phase_one(settings, hook, tmp, results)

    stalled = Aggregator(settings, tmp / "stalled.log", module=CHAOS,
                         env={NEVER_RESUME_ENV: settings.results_topic}).start()  # fmt: skip
    started = time.monotonic()
    try:
        code = stalled.proc.wait(timeout=STALL_S + 90)  # ready in ~5 s (group join, recovery)
    finally:
        stalled.stop()
    elapsed = time.monotonic() - started
    log = stalled.log_path.read_text(errors="replace")
    assert code == 75, f"exit code {code}:\n{stalled.log_tail()}"
    assert "Worker ready" in log
    lines = [ln for ln in log.splitlines() if "aggregator stalled" in ln]
    assert len(lines) == 1, lines
    waited = [float(w) for w in re.findall(rf"{settings.results_topic}:0 lag=\d+ waited_s=([0-9.]+)", lines[0])]
    assert waited and STALL_S <= waited[0] < elapsed, (lines[0], elapsed)
    assert committed(settings, settings.results_topic, 1) == cut, "the stalled worker took nothing"

    agg = Aggregator(settings, tmp / "aggregator.log").start()
    try:
        metrics = wait_until_all_taken(settings, agg, len(results))
    finally:
        code = agg.stop()
    assert code == 0, agg.log_tail()
    check_one_alert(settings, hook)
    assert metric_value(metrics, ACCEPTED) == len(results) - cut, "every post of phase 2 once, none lost"
    assert metric_value(metrics, "moodwatch_aggregator_stall_exits_total") == 0


def test_records_fetched_while_the_streams_resume_are_not_lost_after_a_restart(setup):
    """Issue 12's stall, made likely: without the fetch snapshot the worker takes nothing after its
    restart (and the watchdog ends it with 75 after 30 s)."""
    settings, hook, tmp = setup(30.0)
    results = stream()
    cut = phase_one(settings, hook, tmp, results)

    chaos = {FETCH_WAIT_ENV: "5", SLOW_SEEK_ENV: "2"}
    agg = Aggregator(settings, tmp / "restarted.log", module=CHAOS, env=chaos).start()
    try:
        metrics = wait_until_all_taken(settings, agg, len(results), timeout=90)
    finally:
        code = agg.stop()
    assert code == 0, agg.log_tail()
    check_one_alert(settings, hook)
    assert metric_value(metrics, ACCEPTED) == len(results) - cut
