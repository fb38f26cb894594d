"""The aggregator's steps without a broker: in-memory publish / apply / send fakes, a dict as the table."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import AlertV1
from tests.factories import make_alert, make_result
from workers.aggregator.delivery import AlertDelivery
from workers.aggregator.detection import DetectorConfig, MoodAggregator, Observation, alert_id, tumbling_start
from workers.aggregator.metrics import AggregatorMetrics
from workers.aggregator.repartition import Repartition
from workers.aggregator.settings import AggregatorSettings
from workers.aggregator.step import AggregationStep

W = 60
CFG = DetectorConfig(window_s=W, hop_size_s=3 * W, hop_step_s=W, baseline_windows=10, retention_windows=12)
T0 = 1_700_000_000 // 3600 * 3600
SPIKE_CHANNEL, SPIKE_WINDOW = "ch1", 20


def emotions(dominant: str) -> tuple[float, ...]:
    return tuple(0.65 if e == dominant else 0.05 for e in MIKELS_EMOTIONS)


NEGATIVE, POSITIVE = emotions("sadness"), emotions("contentment")


def observation(post_id: str, channel: str = "ch0", ts: float = T0, negative: bool = False) -> Observation:
    return Observation(post_id, channel, ts, negative, NEGATIVE if negative else POSITIVE)


def record(obs: Observation) -> bytes:
    """A by-channel record, as ``Repartition`` writes it."""
    return json.dumps(obs.to_dict()).encode()


def spike_stream(seed: int = 5, channels: int = 3, windows: int = 28, per_window: int = 20) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for c in range(channels):
        channel = f"ch{c}"
        for wi in range(windows):
            spiking = channel == SPIKE_CHANNEL and SPIKE_WINDOW <= wi < SPIKE_WINDOW + 3
            for j in range(per_window):
                negative = rng.random() < (0.9 if spiking else 0.3)
                out.append(observation(f"{channel}-{wi}-{j}", channel, T0 + wi * W + j * W / per_window, negative))
    out.sort(key=lambda o: o.ts)
    return [record(o) for o in out]


class Fakes:
    """The step's collaborators: a dict table, a list of published alerts, a log of calls in order."""

    def __init__(self, *, fail_publishes: int = 0) -> None:
        self.table: dict = {}
        self.detector = MoodAggregator(self.table, CFG)
        self.metrics = AggregatorMetrics.create()
        self.published: list[AlertV1] = []
        self.calls: list[str] = []
        self.anchors: list[object] = []
        self.applied_before_published: list[str] = []
        self.fail_publishes = fail_publishes
        self.ticks = iter(range(0, 1_000_000, 2))
        self.step = AggregationStep(
            self.detector, publish=self.publish, apply=self.apply, metrics=self.metrics,
            clock=lambda: float(next(self.ticks)),
        )  # fmt: skip

    async def publish(self, alert: AlertV1) -> None:
        self.calls.append("publish")
        if self.fail_publishes:
            self.fail_publishes -= 1
            raise ConnectionError("broker down")
        self.published.append(alert)

    def apply(self, result, anchor) -> None:
        self.calls.append("apply")
        self.anchors.append(anchor)
        self.applied_before_published += [a.alert_id for a in result.alerts if a not in self.published]
        self.detector.apply(result)

    def run(self, values, anchor=None):
        return asyncio.run(self.step.run(values, anchor))

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


def records_total(metrics: AggregatorMetrics, source: str, outcome: str) -> float:
    labels = {"source": source, "outcome": outcome}
    return metrics.registry.get_sample_value("moodwatch_aggregator_records_total", labels) or 0.0


def batches(values: list[bytes], size: int = 50):
    for i in range(0, len(values), size):
        yield values[i : i + size]


def test_a_planted_negative_spike_publishes_exactly_one_alert_before_its_state_is_applied():
    fakes = Fakes()
    values = spike_stream()
    for batch in batches(values):
        fakes.run(batch)
    assert len(fakes.published) == 1, [(a.channel, a.kind, a.window_start) for a in fakes.published]
    (alert,) = fakes.published
    assert alert.channel == SPIKE_CHANNEL and alert.kind == "negative_spike"
    spike_at = T0 + SPIKE_WINDOW * W
    assert spike_at <= alert.window_start.timestamp() < spike_at + W
    assert alert.alert_id == alert_id(SPIKE_CHANNEL, "negative_spike", alert.window_start)
    assert fakes.sample("moodwatch_alerts_raised_total", kind="negative_spike") == 1
    assert fakes.applied_before_published == []
    assert fakes.sample("moodwatch_aggregator_observations_total", status="accepted") == len(values)
    assert fakes.sample("moodwatch_aggregator_event_time_seconds") == json.loads(values[-1])["t"]


def test_a_failed_publish_applies_nothing_and_the_rerun_raises_the_same_alert():
    fakes = Fakes(fail_publishes=1)
    alerting_batch = None
    for batch in batches(spike_stream()):
        before = dict(fakes.table)
        try:
            fakes.run(batch)
        except ConnectionError:
            alerting_batch = batch
            break
    assert alerting_batch is not None, "no batch tried to publish"
    assert fakes.calls[-1] == "publish" and fakes.table == before, "no state of the failed batch was written"
    fakes.run(alerting_batch)  # the worker's restart: the same records again
    assert [a.channel for a in fakes.published] == [SPIKE_CHANNEL]
    assert fakes.sample("moodwatch_aggregator_observations_total", status="duplicate") == 0


def test_duplicate_post_ids_in_a_window_are_counted_once():
    fakes = Fakes()
    first, second = observation("p1", ts=T0 + 1), observation("p2", ts=T0 + 2, negative=True)
    fakes.run([record(first), record(second), record(first)])
    fakes.run([record(first)])  # redelivered in a later batch
    window = fakes.detector.window("ch0", tumbling_start(T0, W))
    assert (window.count, window.negative) == (2, 1)
    assert fakes.sample("moodwatch_aggregator_observations_total", status="accepted") == 2
    assert fakes.sample("moodwatch_aggregator_observations_total", status="duplicate") == 2


def test_malformed_values_are_skipped_and_counted():
    fakes = Fakes()
    bad_emotions = json.dumps({**observation("p0").to_dict(), "e": [0.5] * 7}).encode()
    result = fakes.run([b"not json", None, bad_emotions, b'{"p": "p9"}', record(observation("p1"))], anchor="event")
    assert result is not None and result.statuses == {"accepted": 1}
    assert fakes.sample("moodwatch_aggregator_records_total", source="by_channel", outcome="invalid") == 4
    assert fakes.anchors == ["event"]
    assert fakes.run([b"{}", b"[]"]) is None
    assert fakes.calls == ["apply"], "a batch of only bad records applies nothing"
    assert fakes.sample("moodwatch_aggregator_records_total", source="by_channel", outcome="invalid") == 6


def test_step_metrics_per_post_time_and_state_writes():
    fakes = Fakes()  # the fake clock advances 2 s per reading
    result = fakes.run([record(observation(f"p{i}", ts=T0 + i)) for i in range(4)])
    assert fakes.sample("moodwatch_aggregator_step_seconds_sum") == pytest.approx(2 / 4)
    assert fakes.sample("moodwatch_aggregator_state_writes_total") == len(result.writes) > 0
    assert set(result.writes) <= set(fakes.table)
    assert fakes.sample("moodwatch_aggregator_event_time_seconds") == T0 + 3


def test_repartition_keys_by_channel_and_skips_invalid_results():
    metrics = AggregatorMetrics.create()
    sent: list[tuple[bytes, bytes]] = []

    async def send(key: bytes, value: bytes) -> None:
        sent.append((key, value))

    result = make_result("p1", channel="news", negative=0.8)
    repartition = Repartition(send, metrics)
    for raw in (result.model_dump_json().encode(), b"{}", None):
        asyncio.run(repartition.forward(raw))
    assert [key for key, _ in sent] == [b"news"]
    assert Observation.from_dict(json.loads(sent[0][1])) == Observation.from_result(result)
    assert (records_total(metrics, "results", "ok"), records_total(metrics, "results", "invalid")) == (1, 2)


def test_delivery_builds_the_outputs_once_and_skips_invalid_records():
    metrics = AggregatorMetrics.create()
    delivered: list[str] = []
    built: list[int] = []

    class Outputs:
        def deliver(self, alert: AlertV1) -> None:
            delivered.append(alert.alert_id)

    def make_outputs():
        built.append(1)
        return Outputs()

    delivery = AlertDelivery(AggregatorSettings(), metrics, make_outputs=make_outputs)
    alerts = [make_alert("news"), make_alert("sport")]

    async def scenario():
        for raw in (b"garbage", alerts[0].model_dump_json().encode(), alerts[1].model_dump_json().encode()):
            await delivery.deliver(raw)

    asyncio.run(scenario())
    assert delivered == [a.alert_id for a in alerts] and built == [1]
    assert records_total(metrics, "alerts", "invalid") == 1
