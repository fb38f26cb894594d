"""The commit stage: a broker outage while committing is waited out (never kills the worker), a
rebalance is reported as not committed, and the offsets committed are the batch's next offsets.
The stall watchdog: a consumer poll that never returns ends the process for a restart."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from tests.support.fakes import FakeConsumer, FakeProducer, FakeStore, Rec
from workers.analyzer.worker import AnalyzerWorker
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.settings import AnalyzerSettings as Settings

TP = TopicPartition("posts", 0)


class _NoAnalyzer:
    versions = SimpleNamespace(backend="local")

    def analyze(self, images):  # only malformed posts reach these tests
        raise AssertionError("no post should reach the analyzer")

    def close(self):
        pass


class _NoImages:
    def load_many(self, refs):
        raise AssertionError("no post should be fetched")


def make_worker(consumer: FakeConsumer, **settings) -> tuple[AnalyzerWorker, WorkerMetrics]:
    metrics = WorkerMetrics.create(CollectorRegistry())
    cfg = Settings(metrics_port=0, posts_topic="posts", **settings)
    worker = AnalyzerWorker(cfg, consumer=consumer, producer=FakeProducer(), analyzer=_NoAnalyzer(),
                            images=_NoImages(), store=FakeStore(), metrics=metrics)
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
    assert metrics.batches._value.get() == 0


def test_a_broker_outage_longer_than_the_retry_budget_raises_without_committing():
    consumer = FakeConsumer({TP}, commit_failures=[KafkaConnectionError("down")] * 1000)
    worker, _ = make_worker(consumer, store_retry_max_s=0.0)
    with pytest.raises(KafkaConnectionError):
        worker.process(bad_batch())
    assert consumer.commits == []


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
