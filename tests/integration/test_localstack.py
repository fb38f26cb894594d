"""workers.devstack.servers against the real servers: tansu, localbucket, noida-db."""

from __future__ import annotations

import sys
import time

import pytest
from elasticsearch import Elasticsearch
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from workers.devstack.servers import LocalStack, ManagedProcess, NoidaStore, ProcessStartError, Tansu

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _produce(bootstrap: str, topic: str, n: int, prefix: str = "m") -> list[bytes]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    values = [f"{prefix}-{i}".encode() for i in range(n)]
    for i, value in enumerate(values):
        producer.send(topic, key=f"k{i}".encode(), value=value)
    producer.flush(10)
    producer.close()
    return values


def _read_all(bootstrap: str, topic: str, partitions: int, expected: int, timeout: float = 15.0) -> list:
    """Read a topic from the beginning without a group (no join delay)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    consumer.close()
    return records


def _consume_group(bootstrap: str, topic: str, group: str, n: int, config: dict, timeout: float = 30.0) -> list:
    """Join `group`, take exactly up to n records, commit them, leave."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, **config)
    records: list = []
    deadline = time.monotonic() + timeout
    while len(records) < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200, max_records=n - len(records)).values():
            records.extend(batch)
    consumer.commit()
    consumer.close()
    return records


def test_stack_starts_and_answers(local_stack, tansu, noida):
    overrides = local_stack.settings_overrides()
    assert overrides == {"MOODWATCH_KAFKA_BOOTSTRAP": tansu.bootstrap, "MOODWATCH_ES_URL": noida.url}
    assert tansu.bootstrap.startswith("127.0.0.1:") and noida.url.startswith("http://127.0.0.1:")
    settings = local_stack.settings(es_results_index="x-results")
    assert settings.kafka_bootstrap == tansu.bootstrap and settings.es_url == noida.url
    assert settings.es_results_index == "x-results"
    assert tansu.last_start_seconds is not None and tansu.last_start_seconds < 10
    assert noida.last_start_seconds is not None and noida.last_start_seconds < 10
    assert Elasticsearch(noida.url).cluster.health()["status"] in ("green", "yellow")
    print(f"start times: tansu {tansu.last_start_seconds:.3f}s, noida-db {noida.last_start_seconds:.3f}s")


def test_topics_created_explicitly_and_idempotently(tansu, fresh_topics):
    topics = fresh_topics("posts", "posts.dlq", partitions=3)
    tansu.create_topics(topics.values(), partitions=3)  # again: no error
    with pytest.raises(RuntimeError, match="3 partitions"):
        tansu.create_topics([topics["posts"]], partitions=2)
    admin = tansu.admin()
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(topics.values()))}
    finally:
        admin.close()
    assert described == {name: 3 for name in topics.values()}


def test_produce_and_consume_100(tansu, fresh_topics):
    topic = fresh_topics("posts", partitions=3)["posts"]
    sent = _produce(tansu.bootstrap, topic, 100)
    got = _read_all(tansu.bootstrap, topic, 3, expected=100)
    assert sorted(r.value for r in got) == sorted(sent)
    assert {r.partition for r in got} == {0, 1, 2}  # keyed messages spread over the partitions


def test_group_commit_and_resume(tansu, fresh_topics, unique_group_id, kafka_consumer_config):
    topic = fresh_topics("posts", partitions=2)["posts"]
    sent = _produce(tansu.bootstrap, topic, 100)
    t0 = time.monotonic()
    first = _consume_group(tansu.bootstrap, topic, unique_group_id, 40, kafka_consumer_config)
    join_s = time.monotonic() - t0
    assert len(first) == 40
    # a fresh consumer of the same group resumes from the committed offsets: no overlap, no gap
    rest = _consume_group(tansu.bootstrap, topic, unique_group_id, 60, kafka_consumer_config)
    assert len(rest) == 60
    first_keys = {(r.partition, r.offset) for r in first}
    rest_keys = {(r.partition, r.offset) for r in rest}
    assert not first_keys & rest_keys
    assert sorted(r.value for r in first + rest) == sorted(sent)
    print(f"group join + 40 records + commit: {join_s:.2f}s")


def test_s3_backed_tansu_keeps_messages_and_offsets_across_restarts(tmp_path, kafka_consumer_config):
    broker = Tansu(storage="s3", data_dir=tmp_path / "s3", log_dir=tmp_path / "logs")
    with broker:
        assert broker.bucket_server is not None and broker.bucket_server.running
        topic, group = "durable", "durable-group"
        broker.create_topics([topic], partitions=2)
        sent = _produce(broker.bootstrap, topic, 30)
        assert len(_consume_group(broker.bootstrap, topic, group, 10, kafka_consumer_config)) == 10
        port = broker.port

        broker.restart()  # SIGTERM, same port
        assert broker.port == port and broker.running
        assert sorted(r.value for r in _read_all(broker.bootstrap, topic, 2, expected=30)) == sorted(sent)

        broker.kill()  # SIGKILL, then start again
        broker.start()
        assert broker.port == port
        assert sorted(r.value for r in _read_all(broker.bootstrap, topic, 2, expected=30)) == sorted(sent)
        # the committed group offsets survived too (OffsetFetch, no join needed)
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
        try:
            committed = sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(2))
        finally:
            consumer.close()
        assert committed == 10
    assert not broker.running and not broker.bucket_server.running
    assert any((tmp_path / "s3" / "tansu").rglob("*.batch"))  # the data lives in the bucket folder


def test_noida_kill9_keeps_documents(tmp_path):
    store = NoidaStore(tmp_path / "data", log_dir=tmp_path / "logs")
    with store:
        es = Elasticsearch(store.url, request_timeout=10)
        es.indices.create(index="crash", mappings={"dynamic": "strict", "properties": {"n": {"type": "long"}}})
        for i in range(50):
            es.index(index="crash", id=str(i), document={"n": i})
        es.indices.refresh(index="crash")
        # noida-db snapshots ~1 s after changes: acknowledged writes younger than that die with
        # kill -9. Wait for the snapshot, then crash it.
        assert store.wait_persisted()
        port = store.port
        store.kill()
        assert not store.running
        store.start()
        assert store.port == port
        assert es.count(index="crash")["count"] == 50
        assert es.get(index="crash", id="49")["_source"] == {"n": 49}
        # SIGTERM saves everything at once (no wait needed)
        es.index(index="crash", id="late", document={"n": 99})
        store.restart()
        assert es.count(index="crash")["count"] == 51


class _Exits(ManagedProcess):
    name = "exits"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import sys; print('boom: cannot bind'); sys.exit(3)"]


class _NeverListens(ManagedProcess):
    name = "never-listens"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "import time; print('starting slowly', flush=True); time.sleep(60)"]


def test_start_failures_are_clear_and_keep_logs(tmp_path):
    with pytest.raises(ProcessStartError, match=r"(?s)exited with code 3.*boom: cannot bind"):
        _Exits(log_dir=tmp_path).start()
    proc = _NeverListens(log_dir=tmp_path, ready_timeout_s=0.5)
    with pytest.raises(ProcessStartError, match=r"(?s)not ready after.*starting slowly"):
        proc.start()
    assert not proc.running  # killed after the timeout
    assert "starting slowly" in (tmp_path / "never-listens.log").read_text()
    with pytest.raises(ValueError, match="loopback"):
        _Exits(host="0.0.0.0", log_dir=tmp_path)


def test_local_stack_from_dir(tmp_path):
    with LocalStack.from_dir(tmp_path / "stack") as stack:
        assert stack.tansu.running and stack.store.running
        env: dict[str, str] = {}
        stack.export_env(env)
        assert set(env) == {"MOODWATCH_KAFKA_BOOTSTRAP", "MOODWATCH_ES_URL"}
        assert "export MOODWATCH_ES_URL=http://127.0.0.1:" in stack.env_text()
    assert not stack.tansu.running and not stack.store.running
    assert (tmp_path / "stack" / "logs" / "tansu.log").exists()
    assert (tmp_path / "stack" / "logs" / "noida-db.log").exists()
