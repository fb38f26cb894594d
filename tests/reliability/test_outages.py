"""Outages while the real worker runs: broker restart, store outage, model backend outage.

Each test: a stream (partly produced while the worker runs), an outage in the middle, and at the end
the full verification (nothing lost, nothing duplicated in Elasticsearch, DLQ exactly once after
deduplication). For the store and backend outages the broker's committed offsets and the worker's
own commit log are sampled during the outage: nothing may be committed while the batch in hand
cannot be stored / analysed. The lag gauge (moodwatch_consumer_lag, scraped from the worker's
/metrics) is recorded next to the true lag (produced - committed): tansu's end offsets are "start
of the last batch + 1", so the gauge under-reports.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from tests.reliability.conftest import SEED
from tests.reliability.verify import (
    Paced,
    all_committed,
    build_stream,
    committed_offsets,
    produce,
    scrape_metric,
    verify,
    wait_until,
)
from workers.devstack.servers import LocalStack, NoidaStore, Tansu


def lag_gauge(settings) -> float | None:
    values = scrape_metric(f"http://127.0.0.1:{settings.metrics_port}", "moodwatch_consumer_lag")
    return sum(values.values()) if values else None


def committed_sum(settings) -> int | None:
    try:
        return sum(committed_offsets(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic).values())
    except Exception:  # noqa: BLE001 - broker down
        return None


class Sampler:
    """Samples (t, committed, true lag, lag gauge, RSS) every `interval` s from the test thread."""

    def __init__(self, settings, worker, paced: Paced | None = None, produced: int = 0):
        self.settings, self.worker, self.paced, self.produced = settings, worker, paced, produced
        self.rows: list[dict] = []

    def sample(self) -> dict:
        committed = committed_sum(self.settings)
        produced = self.produced + (self.paced.sent if self.paced is not None else 0)
        row = {
            "t": time.time(),
            "committed": committed,
            "produced": produced,
            "true_lag": None if committed is None else produced - committed,
            "gauge": lag_gauge(self.settings),
            "rss_kb": self.worker.sample_memory().get("VmRSS"),
        }
        self.rows.append(row)
        return row

    def during(self, seconds: float, interval: float = 0.5) -> list[dict]:
        end = time.monotonic() + seconds
        out = []
        while time.monotonic() < end:
            out.append(self.sample())
            time.sleep(interval)
        return out


def commits_between(worker, start: float, end: float) -> list[dict]:
    return [e for e in worker.events("commit") if start <= e["t"] <= end]


# ---- broker restart ------------------------------------------------------------------------------


@pytest.fixture
def s3_broker(tmp_path):
    broker = Tansu(storage="s3", data_dir=tmp_path / "s3", log_dir=tmp_path / "logs")
    broker.start()
    yield broker
    broker.stop()


def run_broker_restarts(
    restarts: list[tuple[str, float]], n_posts: int, *, s3_broker, noida, make_settings, worker_env, figures
) -> None:
    stack = LocalStack(tansu=s3_broker, store=noida)
    settings = make_settings(stack, create_with=s3_broker, kafka_stall_exit_s=30)
    stream = build_stream(n_posts, poison_share_per_kind=0.01, seed=SEED + 2)
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, stream.records)
    # ~0.3 s per batch of 64: the stream lasts long enough for every restart to land mid-stream
    worker = worker_env(settings, MOODWATCH_CHAOS_ANALYZE_DELAY_S="0.3").start()
    # kafka-python 3.0.12 sometimes hangs inside poll() after the broker comes back (seen in CI): the
    # worker's stall watchdog then exits with code 75 and, as a Deployment would, we restart it.
    worker.restart_on_stall_exit = True
    worker.wait_event("commit", timeout=180)
    done = all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends)
    log = []
    for i, (how, down_s) in enumerate(restarts):
        # let it work a while between restarts
        target = (i + 1) * len(stream) // (len(restarts) + 2)
        wait_until(
            lambda target=target: (committed_sum(settings) or 0) >= target,
            timeout=300,
            interval=0.3,
            what=f"progress to {target}",
            while_alive=worker,
        )
        before = committed_sum(settings)
        s3_broker.kill() if how == "kill" else s3_broker.stop()
        down_at = time.time()  # SIGTERM: tansu serves until it has exited
        time.sleep(down_s)
        s3_broker.start()  # same port; localbucket keeps the data
        up_at = time.time()
        assert worker.alive(), f"worker died during broker restart {i}:\n{worker.log_tail(60)}"
        first = worker.wait_event("commit", since=up_at, timeout=240)
        log.append(
            {
                "how": how,
                "down_s": down_s,
                "committed_before": before,
                "recovered_s": round(first["t"] - up_at, 1),
                "commits_while_down": len(commits_between(worker, down_at, up_at)),
            }
        )
        assert not done(), "the stream finished before the broker restart: make it longer"
    wait_until(done, timeout=600, interval=0.5, what="all offsets committed", while_alive=worker)
    assert worker.stop() == 0, worker.log_tail(60)
    # tansu 0.6.0 on s3:// was seen to acknowledge a batch while shutting down and never store it (9
    # post-sentiment records in one soak run: offsets 328-336 assigned, no object written): such holes
    # are the broker's, and are reported, not blamed on the worker. ES and the DLQ stay strict.
    verdict = verify(settings, stream, tolerate_broker_holes=True)
    figures.update(verdict.figures())
    figures.update(
        {
            "broker_restarts": len(log),
            "worker_restarts": worker.starts - 1,
            "worker_stall_exits": worker.stall_restarts,
            "restart_log": log,
            "broker_storage": "s3://localbucket",
        }
    )
    assert verdict.ok, verdict.explain()


@pytest.mark.timeout(420)
def test_broker_restart_mid_stream_worker_reconnects_and_loses_nothing(
    s3_broker, noida, make_settings, worker_env, figures
):
    # SIGKILL, not a graceful stop: tansu 0.6.0 on s3:// can acknowledge a batch while stopping and never
    # store it -- with an offset hole, or with its offsets reused after the restart (10 post-sentiment
    # records in one fresh-clone run under load). That is the broker's loss, not the worker's; graceful
    # stops stay in the soak (`make soak`), which reports them.
    run_broker_restarts(
        [("kill", 4.0)],
        2000,
        s3_broker=s3_broker,
        noida=noida,
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_broker_stopped_and_killed_repeatedly(s3_broker, noida, make_settings, worker_env, figures):
    run_broker_restarts(
        [("stop", 5.0), ("kill", 10.0), ("stop", 20.0), ("kill", 3.0)],
        12000,
        s3_broker=s3_broker,
        noida=noida,
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
    )


# ---- store outage --------------------------------------------------------------------------------


@pytest.fixture
def own_store(tmp_path):
    """A noida-db of this test (the session store is shared and must not be stopped)."""
    store = NoidaStore(tmp_path / "noida", log_dir=tmp_path / "logs")
    store.start()
    yield store
    store.stop()


def summarise_lag(rows: list[dict]) -> dict:
    gauges = [r["gauge"] for r in rows if r["gauge"] is not None]
    lags = [r["true_lag"] for r in rows if r["true_lag"] is not None]
    return {
        "gauge_max": max(gauges, default=None),
        "gauge_min": min(gauges, default=None),
        "true_lag_max": max(lags, default=None),
        "samples": len(rows),
    }


OUTAGE_BURST = 300


def run_outages(
    outages: list[tuple[str, float, Callable[[], None], Callable[[], None]]],
    n_posts: int,
    rate: float,
    *,
    stack,
    make_settings,
    worker_env,
    figures,
    worker_extra_env: dict[str, str],
) -> None:
    """One worker, one stream arriving at `rate`/s, the outages one after the other (each: kind,
    seconds, break, fix), catching up in between. Valid posts only: a batch of nothing but poison
    posts needs no store write and may rightly commit during a store outage.

    Each outage also gets its own burst of OUTAGE_BURST posts, produced while the dependency is
    down: the paced stream runs on the wall clock, and on a loaded machine the outages (and the
    recoveries between them) can outlast it, which left a late outage with no backlog to hold."""
    settings = make_settings(stack)
    stream = build_stream(n_posts, seed=SEED + 3)
    split = len(stream.records) - OUTAGE_BURST * len(outages)
    head, tail, spare = stream.records[:400], stream.records[400:split], stream.records[split:]
    bursts = [spare[i : i + OUTAGE_BURST] for i in range(0, len(spare), OUTAGE_BURST)]
    burst_ends: dict[int, int] = {}
    produce(settings.kafka_bootstrap, settings.posts_topic, head)
    worker = worker_env(settings, **worker_extra_env).start()
    worker.wait_event("commit", timeout=180)
    paced = Paced(settings.kafka_bootstrap, settings.posts_topic, tail, rate=rate).start()
    sampler = Sampler(settings, worker, paced, produced=len(head))
    before = sampler.during(3.0)
    report = []
    for (kind, outage_s, break_it, fix_it), burst in zip(outages, bursts):
        down_at = time.time()
        break_it()
        # A batch already stored / analysed when the outage began may still commit; give it 2 s (a
        # batch takes ~0.3 s here). After that nothing may be committed until the dependency is back.
        sampler.during(2.0)
        frozen = sampler.sample()
        ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, burst)
        sampler.produced += len(burst)
        for partition, end in ends.items():
            burst_ends[partition] = max(burst_ends.get(partition, 0), end)
        during = sampler.during(max(0.5, outage_s - (time.time() - down_at)))
        fix_it()
        up_at = time.time()
        assert worker.alive(), f"worker died during the {kind} outage:\n{worker.log_tail(60)}"
        committed_during = {r["committed"] for r in during if r["committed"] is not None}
        late_commits = commits_between(worker, frozen["t"], up_at)
        first = worker.wait_event("commit", since=up_at, timeout=120)
        report.append(
            {
                "kind": kind,
                "outage_s": round(up_at - down_at, 1),
                "committed_at_outage_start": frozen["committed"],
                "committed_values_during_outage": sorted(committed_during),
                "commits_logged_during_outage": len(late_commits),
                "first_commit_after_s": round(first["t"] - up_at, 1),
                "lag_during": summarise_lag(during),
                # the gauge is refreshed only after a processed batch: it cannot move during an outage
                "gauge_frozen_while_true_lag_grew": len({r["gauge"] for r in during}) == 1
                and (summarise_lag(during)["true_lag_max"] or 0) - (frozen["true_lag"] or 0) > 200,
                "_ok": committed_during <= {frozen["committed"]} and not late_commits,
            }
        )
        sampler.during(4.0)  # catch up a little before the next outage

    ends = paced.join()
    ends = {p: max(ends.get(p, 0), burst_ends.get(p, 0)) for p in ends.keys() | burst_ends.keys()}
    done = all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends)
    after = []
    started = time.monotonic()
    wait_until(
        done,
        timeout=600,
        interval=0.5,
        what="all offsets committed",
        while_alive=worker,
        on_tick=lambda: after.append(sampler.sample()),
    )
    caught_up_s = time.monotonic() - started
    after += sampler.during(6.0, interval=1.0)  # the gauge is refreshed at most every 5 s
    metrics_url = f"http://127.0.0.1:{settings.metrics_port}"
    errors = {
        name: sum(scrape_metric(metrics_url, name).values())
        for name in ("moodwatch_store_errors_total", "moodwatch_backend_errors_total")
    }
    assert worker.stop() == 0, worker.log_tail(60)
    verdict = verify(settings, stream)

    figures.update(verdict.figures())
    figures.update(
        {
            "outages": len(report),
            "outage_log": [{k: v for k, v in r.items() if k != "_ok"} for r in report],
            "worker_restarts": worker.starts - 1,
            "caught_up_after_last_outage_s": round(caught_up_s, 1),
            "lag_before": summarise_lag(before),
            "lag_after": summarise_lag(after),
            "gauge_final": after[-1]["gauge"] if after else None,
            **errors,
            "backend_refused_calls": len(worker.events("backend_refused")),
            "lag_timeline_t_true_gauge": [
                (round(r["t"] - before[0]["t"]), r["true_lag"], r["gauge"])
                for r in sampler.rows[:: max(1, len(sampler.rows) // 20)]
            ],
        }
    )
    for r in report:
        assert r["_ok"], f"offsets advanced during the {r['kind']} outage: {r}"
        if r["kind"] == "backend":  # the worker waits in its retry loop, which refreshes the gauge every 5 s
            assert not r["gauge_frozen_while_true_lag_grew"], f"the lag gauge did not move during the outage: {r}"
    assert verdict.ok, verdict.explain()
    for r in report:
        assert (r["lag_during"]["true_lag_max"] or 0) >= OUTAGE_BURST, f"the outage should have built a backlog: {r}"


def outage_plan(own_store: NoidaStore, flag: Path, store_s: float, backend_s: float):
    return [("store", store_s, own_store.stop, own_store.start), ("backend", backend_s, flag.touch, flag.unlink)]


@pytest.mark.timeout(420)
def test_store_and_backend_outages_stop_commits_then_catch_up(
    tansu, own_store, make_settings, worker_env, figures, tmp_path
):
    flag = tmp_path / "backend-down"
    run_outages(
        outage_plan(own_store, flag, 10.0, 8.0),
        4000,
        120.0,
        stack=LocalStack(tansu=tansu, store=own_store),
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
        worker_extra_env={"MOODWATCH_CHAOS_BACKEND_DOWN_FILE": str(flag)},
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_soak_store_outage_30s_and_backend_outage_30s(tansu, own_store, make_settings, worker_env, figures, tmp_path):
    flag = tmp_path / "backend-down"
    run_outages(
        outage_plan(own_store, flag, 30.0, 30.0) * 2,
        20000,
        150.0,
        stack=LocalStack(tansu=tansu, store=own_store),
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
        worker_extra_env={"MOODWATCH_CHAOS_BACKEND_DOWN_FILE": str(flag)},
    )


# ---- a rebalance while the worker waits out an outage ---------------------------------------------


def join_and_leave(settings, hold_s: float) -> dict:
    """A second member joins the group (as a scaled-out worker would), holds its partitions
    for `hold_s` without committing anything, then leaves."""
    other = KafkaConsumer(
        settings.posts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=settings.consumer_group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        max_poll_records=1,
    )
    try:
        other.pause()  # takes part in the group, consumes nothing
        deadline = time.monotonic() + 60
        while not other.assignment() and time.monotonic() < deadline:
            other.poll(timeout_ms=200)
            other.pause(*other.assignment())
        assigned = sorted(tp.partition for tp in other.assignment())
        joined_at = time.time()
        end = time.monotonic() + hold_s
        while time.monotonic() < end:
            other.poll(timeout_ms=200)
            other.pause(*other.assignment())
        return {"second_member_held": assigned, "joined_at": joined_at}
    finally:
        other.close(autocommit=False)  # LeaveGroup: the partitions go back to the worker


def run_rebalance_during_outage(*, stack, make_settings, worker_env, figures, tmp_path, hold_s: float, after_s: float):
    """Backend down -> a second member joins and leaves (two rebalances) while the worker waits in
    its retry loop -> backend back -> more posts arrive (as they always do) -> everything must be
    stored exactly once."""
    flag = tmp_path / "backend-down"
    settings = make_settings(stack)
    stream = build_stream(1600, seed=SEED + 5)
    head, tail = stream.records[:1200], stream.records[1200:]
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, head)
    worker = worker_env(settings, MOODWATCH_CHAOS_BACKEND_DOWN_FILE=str(flag), MOODWATCH_CHAOS_KAFKA_LOG="INFO").start()
    worker.wait_event("commit", timeout=180)
    flag.touch()
    worker.wait_event("backend_refused", timeout=60)
    held = join_and_leave(settings, hold_s)  # rebalance, and another when it leaves
    time.sleep(after_s)  # the worker keeps polling in its retry loop with the partitions given back
    committed_in_outage = committed_sum(settings)
    back_at = time.time()
    flag.unlink()
    worker.wait_event("resume", since=back_at, timeout=60)  # the retry succeeded; consuming again
    dropped = [e for e in worker.events("polled") if e["t"] < back_at and e["t"] > held["joined_at"]]
    more, _ = produce(settings.kafka_bootstrap, settings.posts_topic, tail)
    ends = {p: max(ends.get(p, 0), more.get(p, 0)) for p in set(ends) | set(more)}
    done = all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends)
    stuck = False
    try:
        wait_until(done, timeout=25, interval=0.5, what="all offsets committed", while_alive=worker)
    except TimeoutError:
        stuck = True  # some partition never got past the gap (or the worker hangs): verify tells which
        os.kill(worker.pid, signal.SIGUSR1)  # thread stacks into the worker log, in case it hangs
        time.sleep(1)
    assert worker.stop() == 0, worker.log_tail(60)
    verdict = verify(settings, stream, results_timeout_s=5)
    figures.update(verdict.figures())
    figures.update(
        {
            "outages": 1,
            "rebalances": 2,
            "second_member_held": held["second_member_held"],
            "committed_during_outage": committed_in_outage,
            "records_returned_by_polls_during_the_retry": sum(
                r[1] - r[0] + 1 for e in dropped for r in e["records"].values()
            ),
            "backend_refused_calls": len(worker.events("backend_refused")),
        }
    )
    assert verdict.ok, verdict.explain()
    assert not stuck, f"not everything was committed within 25 s:\n{worker.log_tail(80)}"


# What happens before c68d782 (events of tests/support/chaos.py): the worker pauses p0+p1 (backend down); a second
# member joins (takes p0; p1 stays paused) and leaves; p0 comes back with a fresh, unpaused state; each
# poll of the retry loop returns the next p0 records, which are thrown away; after the backend is back
# the batch in hand is committed, consumption goes on from the advanced position, and the first later
# p0 commit makes the skipped records unreachable.
@pytest.mark.timeout(300)
def test_rebalance_while_waiting_out_a_backend_outage_loses_nothing(
    tansu, noida, make_settings, worker_env, figures, tmp_path
):
    run_rebalance_during_outage(
        stack=LocalStack(tansu=tansu, store=noida),
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
        tmp_path=tmp_path,
        hold_s=4.0,
        after_s=6.0,
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "kafka-python 3.0.12 bug (reported with issue 7): Fetcher.fetched_records restores a parked, already-parsed "
        "partition buffer only while its in-line slot is None and only one per call; with two partitions parked "
        "that way, one of them is never fetched again after resume(). The worker must never pause two partitions "
        "that hold parsed records (see the rebalance test). Remove the marker once kafka-python is fixed."
    ),
)
@pytest.mark.timeout(120)
def test_kafka_python_resumes_every_paused_partition(tansu, fresh_topics):
    """Plain kafka-python, no worker: park parsed records of two partitions (pause while records are
    buffered), resume both, and check both deliver again."""
    from kafka import KafkaProducer, TopicPartition

    topic = fresh_topics("parked", partitions=2)["parked"]
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, acks="all", linger_ms=20)
    for _ in range(300):
        producer.send(topic, partition=0, value=b"a" * 50)
        producer.send(topic, partition=1, value=b"b" * 50)
    producer.flush()
    producer.close()
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = KafkaConsumer(
        bootstrap_servers=tansu.bootstrap, group_id=None, max_poll_records=10, auto_offset_reset="earliest"
    )
    try:
        consumer.assign([p0, p1])

        def poll_until(tp):
            for _ in range(50):
                if consumer.poll(timeout_ms=200).get(tp):
                    return
            raise AssertionError(f"no records from {tp}")

        poll_until(p0)
        consumer.pause(p0, p1)
        consumer.poll(timeout_ms=300)  # p0's buffered remainder is parked
        consumer.resume(p1)
        poll_until(p1)
        consumer.pause(p1)
        consumer.poll(timeout_ms=300)  # p1's too
        consumer.resume(p0, p1)
        seen = {0: 0, 1: 0}
        end = time.monotonic() + 6
        while time.monotonic() < end and min(seen.values()) == 0:
            for tp, records in consumer.poll(timeout_ms=200).items():
                seen[tp.partition] += len(records)
        assert seen[0] > 0 and seen[1] > 0, f"records per partition after resume: {seen}"
    finally:
        consumer.close()
