"""The commit stage: a broker outage while committing is waited out (never kills the worker), a
rebalance is reported as not committed, and the offsets committed are the batch's next offsets.
Every stage waits out an outage (a TransientError, whichever adapter reports it) and nothing else.
The stall watchdog: a consumer poll that never returns ends the process for a restart."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    TopicAuthorizationFailedError,
)
from prometheus_client import CollectorRegistry

from pipelines.analyzer_api import BackendUnavailable
from schemas.results import ImageAnalysis
from tests.factories import MODEL_VERSIONS, make_result, post_json
from tests.support.fakes import FakeConsumer, FakeProducer, FakeStore, Rec
from workers.adapters.elastic import StoreRejected, StoreUnavailable
from workers.adapters.kafka_io import BrokerUnavailable, OutageAwareConsumer, OutageAwareProducer
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.settings import AnalyzerSettings as Settings
from workers.analyzer.worker import AnalyzerWorker

TP = TopicPartition("posts", 0)


class _NoAnalyzer:
    versions = SimpleNamespace(backend="local")

    def analyze(self, images, texts=None):  # only malformed posts reach these tests
        raise AssertionError("no post should reach the analyzer")

    def close(self):
        pass


class _NoImages:
    def load_many(self, refs):
        raise AssertionError("no post should be fetched")


def make_worker(
    consumer: FakeConsumer, *, producer: FakeProducer | None = None, analyzer=None, images=None, store=None, **settings
) -> tuple[AnalyzerWorker, WorkerMetrics]:
    """The worker with its Kafka fakes wrapped as wiring wraps the real clients."""
    metrics = WorkerMetrics.create(CollectorRegistry())
    cfg = Settings(metrics_port=0, posts_topic="posts", **settings)
    worker = AnalyzerWorker(
        cfg,
        consumer=OutageAwareConsumer(consumer),
        producer=OutageAwareProducer(producer or FakeProducer()),
        analyzer=analyzer or _NoAnalyzer(),
        images=images or _NoImages(),
        store=store if store is not None else FakeStore(),
        metrics=metrics,
    )
    worker._sleep_keeping_membership = lambda s: None  # no real waiting in unit tests
    return worker, metrics


def bad_batch() -> list[Rec]:
    return [Rec("posts", 0, 7, b"a", b"{not json"), Rec("posts", 0, 8, b"b", b"[]")]


def test_broker_outage_during_commit_is_waited_out_and_the_batch_committed():
    consumer = FakeConsumer({TP}, commit_failures=[KafkaConnectionError("111 ECONNREFUSED"), KafkaTimeoutError()])
    worker, metrics = make_worker(consumer)
    report = worker.process(bad_batch())
    assert report.dead_lettered == 2
    assert consumer.commit_attempts == 3
    assert [{tp: om.offset for tp, om in c.items()} for c in consumer.commits] == [{TP: 9}]
    assert metrics.commit_errors._value.get() == 2
    assert consumer.pause_calls >= 1 and not consumer.paused, "partitions paused while waiting, resumed after"
    assert metrics.batches._value.get() == 1


def test_rebalance_during_commit_is_not_retried_and_counts_nothing_as_processed():
    consumer = FakeConsumer({TP}, commit_failures=[CommitFailedError("generation changed")])
    worker, metrics = make_worker(consumer)
    worker.process(bad_batch())
    assert consumer.commit_attempts == 1 and consumer.commits == []
    assert metrics.commit_errors._value.get() == 1, "a failed commit attempt all the same"
    assert metrics.batches._value.get() == 0


def test_a_broker_outage_longer_than_the_retry_budget_raises_without_committing():
    consumer = FakeConsumer({TP}, commit_failures=[KafkaConnectionError("down")] * 1000)
    worker, _ = make_worker(consumer, store_retry_max_s=0.0)
    with pytest.raises(BrokerUnavailable, match="KafkaConnectionError: down") as info:
        worker.process(bad_batch())
    assert isinstance(info.value.__cause__, KafkaConnectionError)
    assert consumer.commits == []


def test_a_commit_refused_for_another_reason_than_an_outage_is_not_retried():
    consumer = FakeConsumer({TP}, commit_failures=[TopicAuthorizationFailedError()])
    worker, metrics = make_worker(consumer)
    with pytest.raises(TopicAuthorizationFailedError):
        worker.process(bad_batch())
    assert consumer.commit_attempts == 1 and consumer.commits == []
    assert not consumer.paused


def test_an_unacknowledged_message_is_sent_again_even_when_kafka_calls_it_permanent():
    consumer = FakeConsumer({TP})
    producer = FakeProducer(ack_failures=[MessageSizeTooLargeError()])
    worker, metrics = make_worker(consumer, producer=producer)
    worker.process(bad_batch())
    assert [key for _topic, key, _value, _headers in producer.sent] == [b"a", b"b", b"a", b"b"]
    assert metrics.producer_errors._value.get() == 1
    assert len(consumer.commits) == 1 and metrics.batches._value.get() == 1


def test_a_store_outage_is_waited_out_and_any_other_store_error_goes_straight_up():
    consumer = FakeConsumer({TP})
    store = FakeStore(failures=[StoreUnavailable("store down", pending_ids=[])] * 2)
    worker, metrics = make_worker(consumer, store=store)
    worker.process(bad_batch())
    assert store.write_attempts == 3 and metrics.store_errors._value.get() == 2
    assert len(consumer.commits) == 1

    consumer = FakeConsumer({TP})
    store = FakeStore(failures=[ConnectionError("not an adapter's outage error")])
    worker, metrics = make_worker(consumer, store=store)
    with pytest.raises(ConnectionError):
        worker.process(bad_batch())
    assert store.write_attempts == 1 and consumer.commits == []


# ---- valid posts: analyzed, stored, published --------------------------------------------------------

_ANALYSIS = ImageAnalysis(**make_result("any", size=(8, 8)).model_dump(include=set(ImageAnalysis.model_fields)))


class _FakeAnalyzer:
    """outages: how many calls raise BackendUnavailable before the analyses come back."""

    versions = MODEL_VERSIONS

    def __init__(self, outages: int = 0):
        self.outages, self.calls = outages, 0

    def analyze(self, images, texts=None):
        self.calls += 1
        if self.calls <= self.outages:
            raise BackendUnavailable("backend down")
        return [_ANALYSIS for _ in images]

    def close(self):
        pass


class _DecodedImages:
    def load_many(self, refs):
        return [SimpleNamespace(rgb=np.zeros((8, 8, 3), np.uint8), width=8, height=8) for _ in refs]


class _RefusingStore(FakeStore):
    """Stores every result but those of `refused`, then reports those as the Elasticsearch sink does."""

    def __init__(self, refused: set[str]):
        super().__init__()
        self.refused = refused

    def write(self, results):
        self.docs.extend(r for r in results if r.post_id not in self.refused)
        refused = [r.post_id for r in results if r.post_id in self.refused]
        reasons = {post_id: f"mapper_parsing_exception: bad {post_id}" for post_id in refused}
        if reasons:
            raise StoreRejected(reasons, index="results")


def valid_batch(*post_ids: str) -> list[Rec]:
    return [Rec("posts", 0, offset, pid.encode(), post_json(pid)) for offset, pid in enumerate(post_ids)]


def test_a_backend_outage_is_waited_out_without_dead_lettering():
    consumer, producer, store, analyzer = FakeConsumer({TP}), FakeProducer(), FakeStore(), _FakeAnalyzer(outages=2)
    worker, metrics = make_worker(consumer, producer=producer, analyzer=analyzer, images=_DecodedImages(), store=store)
    report = worker.process(valid_batch("p-1", "p-2"))
    assert analyzer.calls == 3 and metrics.backend_errors._value.get() == 2
    assert report.processed == 2 and report.dead_lettered == 0
    assert [r.post_id for r in store.docs] == ["p-1", "p-2"]
    assert {t for t, *_ in producer.sent} == {worker.settings.results_topic}
    assert len(consumer.commits) == 1


def test_documents_the_store_refuses_are_dead_lettered_one_by_one_with_their_own_reason():
    consumer, producer, store = FakeConsumer({TP}), FakeProducer(), _RefusingStore({"p-2", "p-4"})
    worker, metrics = make_worker(
        consumer, producer=producer, analyzer=_FakeAnalyzer(), images=_DecodedImages(), store=store
    )
    report = worker.process(valid_batch("p-1", "p-2", "p-3", "p-4"))
    assert report.processed == 2 and report.dead_lettered == 2
    assert [r.post_id for r in store.docs] == ["p-1", "p-3"]
    results = [key for topic, key, _v, _h in producer.sent if topic == worker.settings.results_topic]
    assert results == [b"p-1", b"p-3"]
    dead = {key: dict(headers) for topic, key, _v, headers in producer.sent if topic == worker.settings.dlq_topic}
    assert set(dead) == {b"p-2", b"p-4"}
    for post_id in ("p-2", "p-4"):
        headers = dead[post_id.encode()]
        assert headers["error.class"] == b"StoreRejected" and headers["stage"] == b"store"
        expected = f"1 document(s) rejected by results: {post_id}: mapper_parsing_exception: bad {post_id}"
        assert headers["error.message"] == expected.encode()
    assert metrics.store_errors._value.get() == 0, "a refusal is not an outage"
    assert len(consumer.commits) == 1


class _HangingConsumer(FakeConsumer):
    """poll() never returns until released: the kafka-python 3.0 hang after a broker restart."""

    def __init__(self):
        super().__init__({TP})
        self.release = threading.Event()

    def subscribe(self, topics, listener=None):
        pass

    def poll(self, timeout_ms=0, max_records=None):
        self.release.wait(30)
        return {}


def test_a_poll_that_never_returns_triggers_the_stall_exit():
    consumer = _HangingConsumer()
    stalls: list[float] = []
    worker, _ = make_worker(consumer, kafka_stall_exit_s=0.5)
    worker._sleep_keeping_membership = AnalyzerWorker._sleep_keeping_membership.__get__(worker)
    worker.on_stall = lambda seconds: (stalls.append(seconds), worker.stop_event.set(), consumer.release.set())
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive()
    assert len(stalls) == 1 and 0.5 < stalls[0] < 5


def test_polls_that_return_never_trigger_the_stall_exit():
    consumer = FakeConsumer({TP})
    consumer.subscribe = lambda topics, listener=None: None
    stalls: list[float] = []
    worker, _ = make_worker(consumer, kafka_stall_exit_s=0.3, batch_max_wait_ms=50)
    worker.on_stall = stalls.append
    worker.run(idle_exit_s=1.5)  # idles through many short polls, well past the stall limit in total
    assert stalls == []


class _LaggingEmptyConsumer(FakeConsumer):
    """poll() returns nothing although the partition has 10 records to read (upstream 3106/3131)."""

    def subscribe(self, topics, listener=None):
        pass

    def end_offsets(self, partitions):
        return {tp: 10 for tp in partitions}


def test_empty_polls_while_the_partitions_have_lag_trigger_the_stall_exit():
    consumer = _LaggingEmptyConsumer({TP})
    stalls: list[float] = []
    worker, metrics = make_worker(consumer, kafka_stall_exit_s=0.5, batch_max_wait_ms=50)
    worker.on_stall = lambda seconds: (stalls.append(seconds), worker.stop_event.set())
    worker.run(idle_exit_s=10)
    assert len(stalls) == 1 and 0.5 < stalls[0] < 5
    assert metrics.consumer_lag.labels("0")._value.get() == 10


def test_a_post_under_another_kafka_key_is_dead_lettered_at_validate():
    consumer, producer, store = FakeConsumer({TP}), FakeProducer(), FakeStore()
    worker, _ = make_worker(consumer, producer=producer, analyzer=_FakeAnalyzer(), images=_DecodedImages(), store=store)
    records = [Rec("posts", 0, 0, b"p-1", post_json("p-1")), Rec("posts", 0, 1, b"p-1", post_json("p-2")),
               Rec("posts", 0, 2, None, post_json("p-3"))]  # fmt: skip
    report = worker.process(records)
    assert report.processed == 1 and [r.post_id for r in store.docs] == ["p-1"]
    dead = [dict(h) for topic, _k, _v, h in producer.sent if topic == worker.settings.dlq_topic]
    assert [(d["error.class"], d["stage"]) for d in dead] == [(b"KeyMismatch", b"validate")] * 2
    assert b"'p-2'" in dead[0]["error.message"] and b"(none)" in dead[1]["error.message"]


def test_a_post_id_repeated_in_a_batch_is_written_in_a_second_round():
    consumer, store = FakeConsumer({TP}), FakeStore()
    worker, _ = make_worker(consumer, analyzer=_FakeAnalyzer(), images=_DecodedImages(), store=store)
    records = [Rec("posts", 0, 0, b"p-1", post_json("p-1")), Rec("posts", 0, 1, b"p-2", post_json("p-2")),
               Rec("posts", 0, 2, b"p-1", post_json("p-1", author_id="mallory"))]  # fmt: skip
    worker.process(records)
    assert store.write_attempts == 2  # the store compares the second p-1 with the first, as for any reused id
    assert [(r.post_id, r.author_id) for r in store.docs] == [("p-1", "author-1"), ("p-2", "author-1"),
                                                              ("p-1", "mallory")]  # fmt: skip


def test_a_created_at_from_the_future_is_placed_at_the_time_seen_and_flagged():
    consumer, store = FakeConsumer({TP}), FakeStore()
    worker, metrics = make_worker(consumer, analyzer=_FakeAnalyzer(), images=_DecodedImages(), store=store)
    claimed = datetime(2100, 1, 1, tzinfo=UTC)
    worker.process([Rec("posts", 0, 0, b"p-1", post_json("p-1", created_at=claimed)),
                    Rec("posts", 0, 1, b"p-2", post_json("p-2"))])  # fmt: skip
    future, sane = store.docs
    assert future.event_time_clamped and future.claimed_created_at == claimed.isoformat()
    assert future.created_at == future.analyzed_at
    assert not sane.event_time_clamped and sane.claimed_created_at is None
    assert metrics.event_time_clamped.labels("future")._value.get() == 1
