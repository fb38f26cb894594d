"""The faust aggregator as a real process (`faust -A workers.aggregator worker`) on tansu + noida-db.

A stream with a negative spike planted in one channel among several is replayed into the results
topic. Exactly one alert must come out, for that channel, within one window of the spike: once in
Kafka `alerts`, once in the alerts index, once (signed) at a webhook that fails its first call.
The aggregator is restarted mid-stream, once before the spike and once right after the alert (the
restart that tansu's short end offsets used to break: faust's recovery dropped the newest state,
and the alert came again).
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.factories import T0, make_result
from workers.adapters.elastic import make_es_client
from workers.aggregator.alerts_out import SIGNATURE_HEADER, verify_signature
from workers.aggregator.detection import MoodAggregator, Observation, alert_id
from workers.aggregator.settings import AggregatorSettings
from workers.devstack.servers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
W = 60
SPIKE_CHANNEL, SPIKE_WINDOW = "channel-1", 20
SECRET = "webhook-test-secret"


def stream(seed: int = 3, channels: int = 3, windows: int = 28, per_window: int = 20):
    rng = random.Random(seed)
    out = []
    for c in range(channels):
        ch = f"channel-{c}"  # channel-0..2 hash to both by-channel partitions (ch-N would all go to 0)
        for wi in range(windows):
            spiking = ch == SPIKE_CHANNEL and SPIKE_WINDOW <= wi < SPIKE_WINDOW + 3
            for j in range(per_window):
                neg = rng.random() < (0.9 if spiking else 0.3)
                t = T0 + timedelta(seconds=wi * W + j * (W / per_window) + rng.random())
                out.append(make_result(f"{ch}-{wi}-{j}", channel=ch, negative=0.8 if neg else 0.2, created_at=t,
                                       regions=0, evidence=0))  # fmt: skip
    out.sort(key=lambda r: r.created_at)
    return out


def settings_for(tansu, noida, tmp: Path, tag: str, webhook_url: str, **overrides) -> AggregatorSettings:
    return AggregatorSettings(
        kafka_bootstrap=tansu.bootstrap, es_url=noida.url, results_topic=f"results-{tag}", alerts_topic=f"alerts-{tag}",
        es_results_index=f"agg-results-{tag}", es_alerts_index=f"agg-alerts-{tag}", aggregator_app_id=f"agg-{tag}",
        aggregator_partitions=2, aggregator_data_dir=tmp / "faust", window_s=W, hop_size_s=3 * W, hop_step_s=W,
        baseline_windows=10, retention_windows=12, kafka_session_timeout_ms=6000, aggregator_commit_interval_s=0.5,
        alert_webhook_url=webhook_url, alert_webhook_secret=SECRET, alert_webhook_backoff_max_s=0.5,
        aggregator_metrics_port=free_port(), metrics_port=0, store_retry_max_s=20, **overrides,
    )  # fmt: skip


def env_for(settings: AggregatorSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOODWATCH_")}
    for name in settings.model_fields_set:
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"MOODWATCH_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(ROOT)
    return env


class Webhook(http.server.ThreadingHTTPServer):
    """Records POSTs; answers 503 to the very first one (the sender must retry)."""

    def __init__(self):
        self.calls: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.calls.append((dict(self.headers), body))
                    first = len(outer.calls) == 1
                self.send_response(503 if first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


class Aggregator:
    """`faust -A workers.aggregator worker`; ``module``: another faust entry point (tests.support.chaos_aggregator)."""

    def __init__(self, settings: AggregatorSettings, log_path: Path, *, module: str = "faust",
                 env: dict[str, str] | None = None):  # fmt: skip
        self.settings, self.log_path, self.proc = settings, log_path, None
        self.module, self.extra_env = module, env or {}

    def start(self):
        cmd = [sys.executable, "-m", self.module, "-A", "workers.aggregator", "worker", "-l", "info", "--without-web"]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env_for(self.settings) | self.extra_env, stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        return self

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.settings.aggregator_metrics_port}/metrics"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=5) as resp:
            return resp.read().decode()

    def metrics_or_empty(self) -> str:
        try:
            return self.metrics()
        except OSError:  # the endpoint starts a moment after the worker
            return ""

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


def produce(settings, results):
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=10, acks="all")
    for r in results:
        producer.send(settings.results_topic, key=r.post_id.encode(), value=r.model_dump_json().encode())
    producer.flush()
    producer.close()


def read_alerts(settings) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=1500)
    tps = [TopicPartition(settings.alerts_topic, p) for p in range(settings.aggregator_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = [json.loads(m.value) for m in consumer]
    consumer.close()
    return out


def processed(settings) -> int:
    """Records of the by-channel topic the aggregate agent has committed (one per result)."""
    topic = f"{settings.aggregator_app_id}-by-channel"
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=settings.aggregator_app_id,
                             enable_auto_commit=False)  # fmt: skip
    try:
        return sum(consumer.committed(TopicPartition(topic, p)) or 0 for p in range(settings.aggregator_partitions))
    finally:
        consumer.close(autocommit=False)


def wait_for(predicate, timeout: float, what: str, agg: Aggregator):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if agg.proc.poll() is not None:
            raise AssertionError(f"aggregator exited ({agg.proc.returncode}) waiting for {what}:\n{agg.log_tail()}")
        time.sleep(0.5)
    what = what() if callable(what) else what
    raise AssertionError(f"timed out waiting for {what}:\n{agg.metrics()}\n{agg.log_tail()}")


def trigger_index(settings, results) -> int:
    """Index of the post whose processing raises the alert (the pure logic on the same order)."""
    agg = MoodAggregator({}, settings.detector_config())
    for i, r in enumerate(results):
        if agg.process_and_apply(Observation.from_result(r)).alerts:
            return i
    raise AssertionError("the planted spike raises no alert in the pure model")


@pytest.fixture
def setup(tansu, noida, tmp_path):
    tag = uuid.uuid4().hex[:8]
    hook = Webhook()
    settings = settings_for(tansu, noida, tmp_path, tag, hook.url)
    yield settings, hook, tmp_path
    hook.shutdown()


def check_one_alert(settings, hook):
    spike_at = T0 + timedelta(seconds=SPIKE_WINDOW * W)
    alerts = read_alerts(settings)
    assert len(alerts) == 1, alerts
    (alert,) = alerts
    assert alert["channel"] == SPIKE_CHANNEL and alert["kind"] == "negative_spike"
    start = alert["window_start"]
    assert spike_at.timestamp() <= time_of(start) <= spike_at.timestamp() + W, "within one window of the spike"
    assert alert["alert_id"] == alert_id(SPIKE_CHANNEL, "negative_spike", int(time_of(start)))

    es = make_es_client(settings)
    try:
        es.indices.refresh(index=settings.es_alerts_index)
        hits = es.search(index=settings.es_alerts_index, query={"match_all": {}}, size=10)["hits"]["hits"]
    finally:
        es.close()
    assert [h["_id"] for h in hits] == [alert["alert_id"]]

    deliveries = {json.loads(body)["alert_id"] for _, body in hook.calls}
    assert deliveries == {alert["alert_id"]}
    assert len(hook.calls) == 2, "503 first, then one successful retry"
    for headers, body in hook.calls:
        assert verify_signature(body, SECRET, headers[SIGNATURE_HEADER])
        assert headers["X-Moodwatch-Alert-Id"] == alert["alert_id"]
    return alert


def metric_value(exposition: str, name: str) -> float:
    return sum(float(ln.split()[-1]) for ln in exposition.splitlines() if ln.startswith(name))


def read_topic(settings, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, consumer_timeout_ms=2000)
    tps = [TopicPartition(topic, p) for p in range(settings.aggregator_partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    out = list(consumer)
    consumer.close()
    return out


def check_copartitioned(settings):
    """Every state record of a channel is in the changelog partition of that channel's stream
    partition (what a second worker's recovery relies on), batches or not."""
    stream_partition = {}
    for m in read_topic(settings, f"{settings.aggregator_app_id}-by-channel"):
        assert stream_partition.setdefault(m.key.decode(), m.partition) == m.partition
    seen = 0
    for m in read_topic(settings, f"{settings.aggregator_app_id}-state-changelog"):
        channel = json.loads(m.key).split("|")[1]
        assert m.partition == stream_partition[channel], (json.loads(m.key), m.partition)
        seen += 1
    assert seen and len(set(stream_partition.values())) == settings.aggregator_partitions, stream_partition


def time_of(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_restart_right_after_the_alert_neither_repeats_nor_loses_it(tansu, setup):
    settings, hook, tmp = setup
    tansu.create_topics([settings.results_topic], partitions=1)  # one partition: the order is known
    tansu.create_topics([settings.alerts_topic], partitions=settings.aggregator_partitions)
    results = stream()
    cut = trigger_index(settings, results) + 1
    produce(settings, results[:cut])

    agg = Aggregator(settings, tmp / "aggregator.log").start()
    try:
        wait_for(lambda: len(read_alerts(settings)) >= 1, 120, "the alert", agg)
        wait_for(lambda: processed(settings) >= cut, 60, "phase 1 processed", agg)
        wait_for(lambda: len(hook.calls) >= 2, 30, "the webhook delivery", agg)
        time.sleep(1.0)
        assert agg.stop() == 0
        # the newest changelog records are this very alert's state: exactly what the short end
        # offsets used to drop on recovery
        produce(settings, results[cut:])
        agg.start()
        wait_for(lambda: processed(settings) >= len(results), 120, "phase 2 processed", agg)
        time.sleep(2.0)
        metrics = agg.metrics()
    finally:
        agg.stop()
    check_one_alert(settings, hook)
    corrections = metric_value(metrics, "moodwatch_aggregator_end_offset_corrections_total")
    print("end offset corrections after restart:", corrections)
    assert metric_value(metrics, 'moodwatch_aggregator_observations_total{status="accepted"}') == len(results) - cut


def test_restart_before_the_spike_with_several_partitions(tansu, setup):
    settings, hook, tmp = setup
    tansu.create_topics([settings.results_topic, settings.alerts_topic], partitions=settings.aggregator_partitions)
    results = stream(seed=4)
    half = next(i for i, r in enumerate(results) if r.created_at >= T0 + timedelta(seconds=(SPIKE_WINDOW - 2) * W))
    produce(settings, results[:half])
    agg = Aggregator(settings, tmp / "aggregator.log").start()
    try:
        wait_for(lambda: processed(settings) >= half, 120, "phase 1 processed", agg)
        assert agg.stop() == 0
        # redeliver a slice (at-least-once upstream): dedup by post_id keeps the counts right
        produce(settings, results[half - 200 : half] + results[half:])
        agg.start()
        accepted = 'moodwatch_aggregator_observations_total{status="accepted"}'
        wait_for(lambda: metric_value(agg.metrics_or_empty(), accepted) >= len(results) - half, 120,
                 lambda: f"phase 2 processed ({processed(settings)} of {len(results) + 200})", agg)  # fmt: skip
        wait_for(lambda: len(hook.calls) >= 2, 30, "the webhook delivery", agg)
        time.sleep(2.0)
        metrics = agg.metrics()
    finally:
        agg.stop()
    check_one_alert(settings, hook)
    check_copartitioned(settings)

    def value(name: str) -> float:
        return metric_value(metrics, name)

    print("offset jumps repaired:", value("moodwatch_aggregator_repaired_records_total"),
          "redeliveries:", value("moodwatch_aggregator_redeliveries_total"))  # fmt: skip
    # nothing lost, nothing counted twice: every new post of phase 2 accepted exactly once, and
    # every redelivered one (200 on purpose, more if the consumer re-read some) dropped as duplicate
    assert value('moodwatch_aggregator_observations_total{status="accepted"}') == len(results) - half
    assert value('moodwatch_aggregator_observations_total{status="duplicate"}') >= 200


def test_gap_repair_re_reads_exactly_the_skipped_records(tansu, tmp_path):
    import asyncio

    from workers.aggregator.app import create_app
    from workers.aggregator.faust_fixes import GapRepair
    from workers.aggregator.metrics import AggregatorMetrics

    tag = uuid.uuid4().hex[:8]
    topic = f"gaps-{tag}"
    tansu.create_topics([topic], partitions=1)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=20)
    for i in range(30):
        producer.send(topic, key=b"k", value=f"v{i}".encode())
    producer.flush()
    producer.close()
    settings = AggregatorSettings(kafka_bootstrap=tansu.bootstrap, aggregator_app_id=f"gap-{tag}",
                                  aggregator_data_dir=tmp_path / "faust")  # fmt: skip
    metrics = AggregatorMetrics.create()
    repair = GapRepair(create_app(settings, metrics=metrics), metrics, "results")
    tp = TopicPartition(topic, 0)

    async def scenario():
        assert repair.gap(tp, 3) is None and repair.gap(tp, 4) is None
        assert repair.gap(tp, 4) is None  # a redelivery is not a gap
        gap = repair.gap(tp, 11)
        assert gap == (5, 11)
        got = await repair.fetch(tp, *gap)
        await repair.close()
        return [(m.offset, m.value) for m in got]

    assert asyncio.run(scenario()) == [(i, f"v{i}".encode()) for i in range(5, 11)]
    exposition = __import__("prometheus_client").generate_latest(metrics.registry).decode()
    assert metric_value(exposition, 'moodwatch_aggregator_repaired_records_total{source="results"}') == 6
    assert metric_value(exposition, 'moodwatch_aggregator_redeliveries_total{source="results"}') == 1


def test_verified_end_offsets_corrects_tansus_short_list_offsets(tansu):
    """The trap itself: ListOffsets(latest) answers base-of-last-batch + 1; the probe reads the tail."""
    import asyncio

    import aiokafka

    from workers.aggregator.faust_fixes import verified_end_offsets

    topic = f"ends-{uuid.uuid4().hex[:8]}"
    tansu.create_topics([topic], partitions=2)
    producer = KafkaProducer(bootstrap_servers=tansu.bootstrap, linger_ms=50)
    for batch in range(2):  # two batches of 5 records in partition 0; partition 1 stays empty
        for i in range(5):
            producer.send(topic, value=f"{batch}-{i}".encode(), partition=0)
        producer.flush()
    producer.close()
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    consumer = KafkaConsumer(bootstrap_servers=tansu.bootstrap)
    reported = consumer.end_offsets([tp0, tp1])
    consumer.close()
    corrections = []
    verified = asyncio.run(verified_end_offsets(
        reported, lambda: aiokafka.AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap, group_id=None),
        on_correction=lambda tp, was, now: corrections.append((tp.partition, was, now)),
    ))  # fmt: skip
    assert verified[tp0] == 10 and verified[tp1] == 0
    if reported[tp0] != 10:  # tansu 0.6.0: 6 (base offset 5 of the last batch, + 1)
        assert corrections == [(0, reported[tp0], 10)]
