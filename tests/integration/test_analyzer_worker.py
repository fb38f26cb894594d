"""The analyzer worker against the real local broker and store: exactly-once results, DLQ, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaProducer
from prometheus_client import CollectorRegistry

from tests.factories import tiny_png_b64
from tests.reliability import verify
from tests.support.tiny import tiny_analyzer
from workers.adapters.elastic import make_es_client
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.wiring import build_worker
from workers.devstack.sample_posts import poison_posts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_settings(worker_settings_for):
    return worker_settings_for(partitions=2, batch_max_posts=64, batch_max_wait_ms=200)


def produce(settings, values: list[tuple[str, bytes]]) -> None:
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    for key, value in values:
        producer.send(settings.posts_topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()


def valid_posts(n: int, prefix: str = "p") -> list[tuple[str, bytes]]:
    image = {"b64": tiny_png_b64(32, 32)}
    return [(f"{prefix}-{i:05d}", _post(f"{prefix}-{i:05d}", i, image)) for i in range(n)]


def _post(post_id: str, i: int, image: dict) -> bytes:
    import json

    return json.dumps(
        {
            "schema_version": 1,
            "post_id": post_id,
            "author_id": f"a{i % 7}",
            "channel": f"c{i % 3}",
            "created_at": "2026-11-01T12:00:00+00:00",
            "image": image,
        }
    ).encode()


def read_topic(settings, topic: str, expected: int) -> list:
    """Every record of ``topic`` (at least ``expected``; anything beyond would be a duplicate)."""
    return verify.read_topic(settings.kafka_bootstrap, topic, expect_at_least=expected)


def run_in_thread(settings, idle_exit_s: float = 6.0):
    worker = build_worker(
        settings,
        analyzer=tiny_analyzer(regions=False),
        create_topics=False,
        metrics=WorkerMetrics.create(CollectorRegistry()),
    )
    thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": idle_exit_s}, daemon=True)
    thread.start()
    return worker, thread


def test_thousand_posts_end_in_elasticsearch_exactly_once(worker_settings):
    produce(worker_settings, valid_posts(1000))
    worker, thread = run_in_thread(worker_settings)
    thread.join(timeout=600)
    assert not thread.is_alive(), "worker did not finish"
    ids = verify.es_ids(worker_settings)
    assert len(ids) == 1000 and len(set(ids)) == 1000
    results = read_topic(worker_settings, worker_settings.results_topic, 1000)
    assert sorted(r.key.decode() for r in results) == sorted(ids)
    assert worker.metrics.posts_processed._value.get() == 1000


def test_poison_posts_are_dead_lettered_with_headers_and_the_stream_flows(worker_settings):
    poison = poison_posts()
    values = valid_posts(20, "before") + [(key, value) for _label, key, value in poison] + valid_posts(20, "after")
    produce(worker_settings, values)
    _, thread = run_in_thread(worker_settings)
    thread.join(timeout=300)
    assert len(verify.es_ids(worker_settings)) == 40
    dlq = read_topic(worker_settings, worker_settings.dlq_topic, len(poison))
    assert len(dlq) == len(poison)
    by_key = {r.key.decode(): {k: v.decode() for k, v in r.headers} for r in dlq}
    expected = {
        "poison-json": ("MalformedPost", "validate"),
        "poison-missing": ("InvalidPost", "validate"),
        "poison-version": ("UnknownSchemaVersion", "validate"),
        "poison-bytes": ("UnsupportedFormat", "decode"),
        "poison-bomb": ("TooManyPixels", "decode"),
        "poison-url": ("BlockedURL", "fetch"),
        "poison-key": ("KeyMismatch", "validate"),
    }
    for key, (error, stage) in expected.items():
        headers = by_key[key]
        assert headers["error.class"] == error and headers["stage"] == stage, headers
        assert headers["original.topic"] == worker_settings.posts_topic
        assert headers["original.partition"] in ("0", "1") and int(headers["original.offset"]) >= 0
        assert headers["error.message"]
    original = dict(values)
    assert all(r.value == original[r.key.decode()] for r in dlq), "DLQ must carry the original bytes"


def _env(settings) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None and not isinstance(value, (dict, list)):
            env[f"MOODWATCH_{name.upper()}"] = str(
                value.get_secret_value() if hasattr(value, "get_secret_value") else value
            )
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_worker_killed_between_store_and_commit_loses_and_duplicates_nothing(worker_settings):
    produce(worker_settings, valid_posts(1000))
    env = _env(worker_settings)
    crashed = subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_worker"],
        cwd=ROOT,
        env=env | {"MOODWATCH_TEST_KILL_AFTER_STORES": "3"},
        capture_output=True,
        timeout=300,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    partial = verify.es_ids(worker_settings)
    assert 0 < len(partial) < 1000, "the kill should leave the stream half done"
    finished = subprocess.run(
        [sys.executable, "-m", "tests.support.tiny_worker"], cwd=ROOT, env=env, capture_output=True, timeout=600
    )
    assert finished.returncode == 0, finished.stderr[-2000:]
    ids = verify.es_ids(worker_settings)
    assert len(ids) == 1000 and len(set(ids)) == 1000


def test_a_reused_post_id_is_dead_lettered_as_a_conflict_and_never_overwrites(worker_settings):
    """Author B's post under author A's post_id (later, or in the same batch) is refused as IdConflict:
    A's document stays; the same post processed again stays idempotent (stored once, not dead-lettered)."""
    import json

    image = {"b64": tiny_png_b64(32, 32)}
    original, intruder = _post("shared-1", 1, image), _post("shared-1", 2, image)  # authors a1 / a2
    first, second = _post("shared-2", 3, image), _post("shared-2", 4, {"b64": tiny_png_b64(16, 16)})
    produce(worker_settings, [("shared-1", original)])
    _, thread = run_in_thread(worker_settings)
    thread.join(timeout=120)
    produce(
        worker_settings, [("shared-1", original), ("shared-1", intruder), ("shared-2", first), ("shared-2", second)]
    )
    _, thread = run_in_thread(worker_settings)
    thread.join(timeout=120)
    assert not thread.is_alive()

    es = make_es_client(worker_settings)
    docs = {pid: es.get(index=worker_settings.es_results_index, id=pid)["_source"] for pid in ("shared-1", "shared-2")}
    assert (docs["shared-1"]["author_id"], docs["shared-2"]["author_id"]) == ("a1", "a3")
    dlq = read_topic(worker_settings, worker_settings.dlq_topic, 2)
    assert sorted(r.value for r in dlq) == sorted([intruder, second])
    for r in dlq:
        headers = {k: v.decode() for k, v in r.headers}
        assert (headers["error.class"], headers["stage"]) == ("IdConflict", "store"), headers
        assert "already stands for a different document" in headers["error.message"]
    published = read_topic(worker_settings, worker_settings.results_topic, 3)
    authors = sorted((r.key.decode(), json.loads(r.value)["author_id"]) for r in published)
    assert authors == [("shared-1", "a1"), ("shared-1", "a1"), ("shared-2", "a3")]


def test_a_hung_store_shows_in_the_store_error_metric_and_the_worker_logs_within_seconds(
    worker_settings, tmp_path, capsys
):
    """A frozen store (SIGSTOP) answers nothing: each timed-out write must count as a store error and be
    logged by the worker at once, not after the client's own retries or the sink's retry budget."""
    from workers.common.logs import configure_logging
    from workers.devstack.servers import NoidaStore

    store = NoidaStore(tmp_path / "noida", log_dir=tmp_path / "logs")
    store.start()
    settings = worker_settings.model_copy(update={"es_url": store.url, "es_request_timeout_s": 1.0})
    configure_logging("INFO", json=True)
    try:
        produce(settings, valid_posts(5, "hung"))
        worker, thread = run_in_thread(settings, idle_exit_s=8.0)  # templates installed before the freeze
        os.kill(store.pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            while worker.metrics.store_errors._value.get() < 3 and time.monotonic() < frozen_at + 30:
                time.sleep(0.1)
            errors_while_frozen = worker.metrics.store_errors._value.get()
            seen_after_s = time.monotonic() - frozen_at
        finally:
            os.kill(store.pid, signal.SIGCONT)
        thread.join(timeout=120)
        print(f"store errors {errors_while_frozen} after {seen_after_s:.1f} s frozen")
        # 1 s request timeout: three failed attempts within a few seconds (was: one, after the sink's 10 s budget)
        assert errors_while_frozen >= 3 and seen_after_s < 8, (errors_while_frozen, seen_after_s)
        logged = capsys.readouterr()
        assert '"es_write_retry"' in logged.err + logged.out and "ConnectionTimeout" in logged.err + logged.out
        assert sorted(verify.es_ids(settings)) == [f"hung-{i:05d}" for i in range(5)]  # nothing lost once it thaws
    finally:
        store.stop()
