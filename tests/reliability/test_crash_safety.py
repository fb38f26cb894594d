"""Crash safety: kill -9 the real worker at seeded random points over a stream with poison posts.

Kill modes (seeded mix, at least one of each):
- "random": SIGKILL from outside, a random delay after the worker's first commit of that run;
- "after_store": the worker SIGKILLs itself right after the N-th acknowledged store write
  (documents in Elasticsearch, nothing produced, nothing committed);
- "before_commit": right before the N-th commit (stored AND produced to post-sentiment / DLQ, not
  committed: the re-read produces those records again -> raw duplicates on the DLQ topic).

After every kill the commit invariant is checked against the broker's committed offsets: every record
below a committed offset is in Elasticsearch (accepted posts) or in the DLQ (rejected ones). At the
end: every accepted post is in Elasticsearch exactly once (no missing, no extra), every rejected post
in the DLQ exactly once after deduplication on (original.topic, original.partition, original.offset),
with the expected error class and stage; raw DLQ / results duplicates are counted and reported.
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from tests.reliability.conftest import SEED
from tests.reliability.verify import (
    all_committed,
    build_stream,
    committed_offsets,
    es_ids,
    produce,
    read_topic,
    verify,
    wait_until,
)

MODES = ("random", "after_store", "before_commit")


def kill_plan(kills: int, rng: random.Random) -> list[tuple[str, float]]:
    """(mode, target) per kill: the kills are spread over the stream (kill i aims at the fraction
    (i + 1) / (kills + 1) of it, +- a random jitter), modes mixed in a seeded order."""
    modes = [MODES[i % len(MODES)] for i in range(kills)]
    rng.shuffle(modes)
    return [(mode, (i + 1 + rng.uniform(-0.35, 0.35)) / (kills + 1)) for i, mode in enumerate(modes)]


def committed_from_events(worker) -> int:
    latest: dict[str, int] = {}
    for e in worker.events("commit"):
        for tp, off in e["offsets"].items():
            latest[tp] = max(latest.get(tp, 0), off)
    return sum(latest.values())


def check_commit_invariant(settings, stream, where, committed: dict[int, int]) -> dict[str, int]:
    """Nothing below a committed offset may be missing from Elasticsearch or the DLQ."""
    stored = set(es_ids(settings))
    dlq = read_topic(settings.kafka_bootstrap, settings.dlq_topic, expect_at_least=0, quiet_s=1.0, timeout_s=20)
    dead = {
        (h["original.partition"], h["original.offset"]) for h in ({k: v.decode() for k, v in r.headers} for r in dlq)
    }
    below = [key for key, (p, off) in where.items() if off < committed.get(p, 0)]
    missing_es = [k for k in below if k in stream.accepted and k not in stored]
    missing_dlq = [k for k in below if k in stream.rejected and (str(where[k][0]), str(where[k][1])) not in dead]
    assert not missing_es and not missing_dlq, (
        f"committed past unprocessed records: {len(missing_es)} not stored {missing_es[:5]}, "
        f"{len(missing_dlq)} not dead-lettered {missing_dlq[:5]} (committed {committed})"
    )
    return {"below_committed": len(below), "stored": len(stored), "dlq_raw": len(dlq)}


def run_crash_test(n_posts: int, kills: int, *, local_stack, make_settings, worker_env, figures, seed: int) -> None:
    rng = random.Random(seed)
    # a kill -9'd member stays in the group until its session times out: 4 s instead of 6 s saves ~3 s
    # per restart (heartbeats run on kafka-python's own thread, so 4 s is safe on this busy machine)
    settings = make_settings(local_stack, kafka_session_timeout_ms=4000)
    stream = build_stream(n_posts, poison_share_per_kind=0.02, seed=seed)
    ends, where = produce(settings.kafka_bootstrap, settings.posts_topic, stream.records)
    bootstrap, group, topic = settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic
    done = all_committed(bootstrap, group, topic, ends)
    worker = worker_env(settings)
    log: list[dict] = []
    for i, (mode, fraction) in enumerate(kill_plan(kills, rng)):
        since = time.time()
        target = int(fraction * len(stream))
        if mode == "random":
            # from outside, at a random moment once the run has committed up to about the target
            worker.start()
            worker.wait_event("commit", since=since, timeout=180)
            wait_until(
                lambda target=target: committed_from_events(worker) >= target - settings.batch_max_posts,
                timeout=300,
                interval=0.05,
                what=f"progress to {target}",
                while_alive=worker,
            )
            arg = round(rng.uniform(0.0, 1.0), 2)
            time.sleep(arg)
            worker.kill()
        else:
            # the worker kills itself at the N-th store write / commit of this run, N chosen so the
            # kill lands near the target
            arg = max(1, (target - committed_from_events(worker)) // settings.batch_max_posts) + rng.randint(0, 2)
            env = {
                "MOODWATCH_CHAOS_KILL_AFTER_STORES"
                if mode == "after_store"
                else "MOODWATCH_CHAOS_KILL_BEFORE_COMMIT": str(arg)
            }
            worker.start(**env)
            worker.wait(timeout=240)
        rc = worker.proc.returncode
        assert rc == -signal.SIGKILL, f"kill {i} ({mode}): worker exited with {rc}:\n{worker.log_tail()}"
        committed = committed_offsets(bootstrap, group, topic)
        assert not done(), f"the stream finished before kill {i}: make it longer"
        entry = {"mode": mode, "arg": arg, "committed": sum(committed.values())}
        entry.update(check_commit_invariant(settings, stream, where, committed))
        log.append(entry)
    # the last run: no chaos, until everything is committed
    worker.start()
    started = time.monotonic()
    wait_until(done, timeout=600, interval=0.5, what="all offsets committed", while_alive=worker)
    catch_up_s = time.monotonic() - started
    assert worker.stop() == 0, worker.log_tail()
    verdict = verify(settings, stream)
    figures.update(verdict.figures())
    figures.update(
        {
            "kills": len(log),
            "restarts": worker.starts - 1,
            "kill_modes": {m: sum(e["mode"] == m for e in log) for m in MODES},
            "final_run_s": round(catch_up_s, 1),
            "commit_invariant_checks": len(log),
            "kill_log": [f"{e['mode']}({e['arg']}): committed={e['committed']}" for e in log],
        }
    )
    assert verdict.ok, verdict.explain()
    assert len(log) >= 5


@pytest.mark.timeout(600)
def test_kill_9_at_random_points_loses_and_duplicates_nothing(local_stack, make_settings, worker_env, figures):
    run_crash_test(
        5000, 5, local_stack=local_stack, make_settings=make_settings, worker_env=worker_env, figures=figures, seed=SEED
    )


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_soak_kill_9_many_times_over_a_long_stream(local_stack, make_settings, worker_env, figures):
    run_crash_test(
        20000,
        15,
        local_stack=local_stack,
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
        seed=SEED + 1,
    )
