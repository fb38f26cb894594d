"""The commit stage: a broker outage while committing is waited out (never kills the worker), a
rebalance is reported as not committed, and the offsets committed are the batch's next offsets."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaConnectionError, KafkaTimeoutError
from prometheus_client import CollectorRegistry

from tests.support.fakes import FakeConsumer, FakeProducer, FakeStore, Rec
from workers.analyzer import AnalyzerWorker
from workers.metrics import WorkerMetrics
from workers.settings import Settings

TP = TopicPartition("posts", 0)


class _NoAnalyzer:
    versions = None

    def analyze(self, images):  # only malformed posts reach these tests
        raise AssertionError("no post should reach the analyzer")


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
