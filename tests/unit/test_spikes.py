"""workers/aggregator/detection.py: windows, dedup, the statistics, hysteresis / cool-down, emotion shift.

Seeded simulations replay a stream of several channels; a spike is planted at a known time in one
channel. Hypothesis checks the window arithmetic and that dedup / arrival order don't change state.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import AlertV1
from workers.aggregator.detection import (
    DetectorConfig,
    MoodAggregator,
    Observation,
    WindowStats,
    alert_id,
    binomial_greater,
    evaluate_negative,
    hopping_starts,
    tumbling_start,
)

W = 60
CFG = DetectorConfig(window_s=W, hop_size_s=3 * W, hop_step_s=W, baseline_windows=10, retention_windows=12)
T0 = 1_700_000_000 // 3600 * 3600  # an hour boundary

NEG_MIX = {"sadness": 0.5, "fear": 0.2, "anger": 0.15, "disgust": 0.15}
POS_MIX = {"contentment": 0.4, "amusement": 0.25, "excitement": 0.2, "awe": 0.15}
POS_SHIFTED = {"awe": 0.8, "contentment": 0.1, "excitement": 0.05, "amusement": 0.05}


def emotions_for(rng: random.Random, mix: dict[str, float]) -> tuple[float, ...]:
    dominant = rng.choices(list(mix), weights=list(mix.values()))[0]
    rest = [rng.random() for _ in MIKELS_EMOTIONS]
    peak = rng.uniform(0.45, 0.8)
    scale = (1 - peak) / sum(rest)
    return tuple(peak if e == dominant else r * scale for e, r in zip(MIKELS_EMOTIONS, rest))


def stream(
    seed: int,
    *,
    channels: int = 4,
    windows: int = 30,
    rate: float = 25,
    base_negative: float = 0.3,
    spike: tuple[str, int, int, float] | None = None,  # channel, first window, windows, share
    shift: tuple[str, int] | None = None,  # channel, first window of the new emotion mix
    duplicates: float = 0.0,
) -> list[Observation]:
    rng = random.Random(seed)
    out: list[Observation] = []
    for c in range(channels):
        channel = f"ch{c}"
        for wi in range(windows):
            n = max(0, int(rng.gauss(rate, rate**0.5)))
            p_neg = base_negative
            if spike and spike[0] == channel and spike[1] <= wi < spike[1] + spike[2]:
                p_neg = spike[3]
            pos_mix = POS_SHIFTED if shift and shift[0] == channel and wi >= shift[1] else POS_MIX
            for j in range(n):
                neg = rng.random() < p_neg
                obs = Observation(
                    post_id=f"{channel}-{wi}-{j}",
                    channel=channel,
                    ts=T0 + wi * W + rng.uniform(0, W),
                    negative=neg,
                    emotions=emotions_for(rng, NEG_MIX if neg else pos_mix),
                )
                out.append(obs)
                if rng.random() < duplicates:
                    out.append(obs)  # at-least-once redelivery
    # roughly time-ordered, with the jitter of several partitions interleaving
    out.sort(key=lambda o: o.ts + rng.uniform(0, 5))
    return out


def run(observations, cfg: DetectorConfig = CFG) -> tuple[MoodAggregator, list[AlertV1]]:
    agg = MoodAggregator({}, cfg, now=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    alerts: list[AlertV1] = []
    for obs in observations:
        alerts.extend(agg.process_and_apply(obs).alerts)
    return agg, alerts


# --- planted spike / no spike -------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_spike_raises_exactly_one_alert_for_that_channel_within_one_window(seed):
    spike_window = 20
    obs = stream(seed, spike=("ch2", spike_window, 3, 0.85), duplicates=0.05)
    _, alerts = run(obs)
    assert len(alerts) == 1, [(a.channel, a.kind, a.window_start) for a in alerts]
    (alert,) = alerts
    assert alert.channel == "ch2" and alert.kind == "negative_spike"
    spike_at = T0 + spike_window * W
    assert spike_at <= alert.window_start.timestamp() <= spike_at + W
    assert alert.observed_negative_share > 0.6 and 0.2 < alert.baseline_negative_share < 0.4
    assert alert.p_value < CFG.alpha_arm and alert.effect_size >= CFG.min_effect
    assert alert.dominant_emotion in NEG_MIX and alert.previous_dominant_emotion in POS_MIX
    assert alert.alert_id == alert_id("ch2", "negative_spike", alert.window_start)


@pytest.mark.parametrize("seed", range(10, 16))
def test_no_alert_on_the_same_base_rate_without_a_spike(seed):
    _, alerts = run(stream(seed, duplicates=0.05))
    assert alerts == []


@pytest.mark.parametrize("seed", [7, 8])
def test_no_alert_at_low_volume(seed):
    _, alerts = run(stream(seed, rate=4, base_negative=0.4))
    assert alerts == []


def test_spike_alert_is_the_same_whatever_the_redelivery():
    plain = stream(3, spike=("ch1", 18, 2, 0.9))
    _, a1 = run(plain)
    rng = random.Random(0)
    redelivered = list(plain)
    for i in sorted(rng.sample(range(len(plain)), 200), reverse=True):
        redelivered.insert(i + rng.randint(0, 30), plain[i])
    _, a2 = run(redelivered)
    assert [a.alert_id for a in a1] == [a.alert_id for a in a2] and len(a1) == 1


# --- hysteresis and cool-down -------------------------------------------------------------------


def window_posts(channel: str, wi: int, n: int, negative: int, tag: str = "") -> list[Observation]:
    neg_e = tuple(0.7 if e == "sadness" else 0.3 / 7 for e in MIKELS_EMOTIONS)
    pos_e = tuple(0.7 if e == "contentment" else 0.3 / 7 for e in MIKELS_EMOTIONS)
    return [
        Observation(
            f"{channel}-{tag}{wi}-{j}",
            channel,
            T0 + wi * W + j * W / (n + 1),
            j < negative,
            neg_e if j < negative else pos_e,
        )
        for j in range(n)
    ]


def shaped(channel: str, shares: list[float], n: int = 30) -> list[Observation]:
    out: list[Observation] = []
    for wi, share in enumerate(shares):
        out += window_posts(channel, wi, n, round(share * n))
    return out


def kinds(alerts):
    return [(a.kind, int((a.window_start.timestamp() - T0) // W)) for a in alerts]


def test_a_spike_lasting_several_windows_is_one_incident_one_alert():
    _, alerts = run(shaped("a", [0.3] * 12 + [0.9] * 6 + [0.3] * 6))
    assert kinds(alerts) == [("negative_spike", 12)]


def test_cooldown_suppresses_a_second_spike_soon_after_and_allows_it_later():
    cfg = DetectorConfig(**{**CFG.__dict__, "cooldown_windows": 4})
    soon = [0.3] * 12 + [0.9] + [0.3] + [0.9] + [0.3] * 4
    _, alerts = run(shaped("a", soon), cfg)
    assert kinds(alerts) == [("negative_spike", 12)]  # disarmed at 13, but 14 is inside the cool-down
    later = [0.3] * 12 + [0.9] + [0.3] * 4 + [0.95] + [0.3] * 2
    _, alerts = run(shaped("a", later), cfg)
    assert kinds(alerts) == [("negative_spike", 12), ("negative_spike", 17)]


def test_hysteresis_an_elevated_window_keeps_the_incident_open():
    cfg = DetectorConfig(**{**CFG.__dict__, "cooldown_windows": 1})
    # 0.55 after the spike: effect > disarm_effect, so still the same incident (no re-arm), and the
    # next 0.9 is no new alert; the quiet window after it disarms, so the last 0.9 is a new incident
    shares = [0.3] * 12 + [0.9, 0.55, 0.9, 0.3, 0.9, 0.3]
    _, alerts = run(shaped("a", shares), cfg)
    assert kinds(alerts) == [("negative_spike", 12), ("negative_spike", 16)]


def test_thin_windows_and_thin_baselines_never_alert():
    # 100% negative, but only 5 posts per window: below min_count
    _, alerts = run(shaped("a", [0.3] * 12 + [1.0] * 3, n=5))
    assert alerts == []
    # a big spike with no baseline at all (new channel)
    _, alerts = run(shaped("a", [1.0] * 3))
    assert alerts == []


# --- emotion shift -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_emotion_shift_raises_one_alert_at_the_shift(seed):
    obs = stream(seed, shift=("ch3", 20))
    _, alerts = run(obs)
    assert [(a.channel, a.kind) for a in alerts] == [("ch3", "emotion_shift")]
    (alert,) = alerts
    assert alert.previous_dominant_emotion == "contentment" and alert.dominant_emotion == "awe"
    assert T0 + 20 * W <= alert.window_start.timestamp() <= T0 + 21 * W
    assert alert.p_value < CFG.shift_alpha


def test_emotion_shift_needs_its_own_minimum_count():
    cfg = DetectorConfig(**{**CFG.__dict__, "shift_min_count": 50})
    _, alerts = run(stream(21, shift=("ch3", 20)), cfg)
    assert alerts == []


# --- window arithmetic, dedup, order (hypothesis) ------------------------------------------------


@given(ts=st.floats(min_value=0, max_value=4e9, allow_nan=False), k=st.integers(1, 6), step=st.integers(1, 900))
def test_hopping_windows_cover_the_timestamp(ts, k, step):
    size = k * step
    starts = hopping_starts(ts, size, step)
    assert len(starts) == k
    assert all(s <= ts < s + size and s % step == 0 for s in starts)
    t = tumbling_start(ts, size)
    assert t <= ts < t + size and t % size == 0


obs_strategy = st.builds(
    Observation,
    post_id=st.sampled_from([f"p{i}" for i in range(40)]),
    channel=st.sampled_from(["a", "b"]),
    ts=st.floats(min_value=T0, max_value=T0 + 5 * W, allow_nan=False),
    negative=st.booleans(),
    emotions=st.lists(st.floats(0, 1), min_size=8, max_size=8).map(tuple),
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(observations=st.lists(obs_strategy, max_size=60), seed=st.integers(0, 2**16))
def test_duplicates_and_arrival_order_do_not_change_window_state(observations, seed):
    # one post_id is one post: redeliveries carry the same content
    first: dict[str, Observation] = {}
    for o in observations:
        first.setdefault(o.post_id, o)
    unique = list(first.values())
    rng = random.Random(seed)
    redelivered = unique + [rng.choice(unique) for _ in range(len(unique) // 2)] if unique else []
    rng.shuffle(redelivered)
    agg_a, _ = run(sorted(unique, key=lambda o: o.ts))
    agg_b, _ = run(redelivered)
    for channel in ("a", "b"):
        for wi in range(6):
            wa, wb = agg_a.window(channel, T0 + wi * W), agg_b.window(channel, T0 + wi * W)
            assert (wa.count, wa.negative, wa.dominant_counts) == (wb.count, wb.negative, wb.dominant_counts)
            assert wa.emotion_sum == pytest.approx(wb.emotion_sum)
    per_window = Counter((o.channel, tumbling_start(o.ts, W)) for o in unique)
    for (channel, start), n in per_window.items():
        assert agg_a.window(channel, start).count == n


@given(
    channel=st.from_regex(r"[A-Za-z0-9._:@-]{1,20}", fullmatch=True),
    kind=st.sampled_from(["negative_spike", "emotion_shift"]),
    start=st.integers(0, 2**33),
)
def test_alert_id_is_deterministic_and_valid(channel, kind, start):
    a = alert_id(channel, kind, start)
    assert a == alert_id(channel, kind, datetime.fromtimestamp(start, tz=UTC))
    assert a != alert_id(channel, kind, start + 1)
    assert len(a) == 32 and int(a, 16) >= 0


@given(k=st.integers(0, 60), n=st.integers(1, 60), p=st.floats(0.01, 0.99))
def test_binomial_p_value_is_monotone_in_k(k, n, p):
    k = min(k, n)
    pv = binomial_greater(k, n, p)
    assert 0 <= pv <= 1
    if k < n:
        assert binomial_greater(k + 1, n, p) <= pv + 1e-12


def test_late_posts_beyond_retention_are_dropped_and_state_expires():
    agg, _ = run(shaped("a", [0.3] * 30))
    store = agg.store
    starts = sorted(int(k.rsplit("|", 1)[1]) for k in store if k.startswith("w|a|T"))
    assert len(starts) == CFG.retention_windows and starts[-1] == T0 + 29 * W
    assert not [k for k in store if k.startswith("d|") and int(k.split("|")[2]) < starts[0]]
    hop = sorted(int(k.rsplit("|", 1)[1]) for k in store if k.startswith("w|a|H"))
    assert hop[0] + CFG.hop_size_s > starts[0]
    late = Observation("late-1", "a", T0 + 2 * W, True, tuple([0.125] * 8))
    assert agg.process_and_apply(late).status == "late"
    assert agg.process_and_apply(window_posts("a", 29, 1, 0)[0]).status == "duplicate"


def test_window_stats_roundtrip_and_summary():
    w = WindowStats(start=T0, size=W)
    for o in window_posts("a", 0, 10, 4):
        w.add(o)
    assert WindowStats.from_dict(w.to_dict()) == w
    s = w.summary()
    assert s["count"] == 10 and s["negative"] == 4 and s["positive"] == 6 and s["negative_share"] == 0.4
    assert sum(s["mean_emotions"].values()) == pytest.approx(1.0, abs=1e-5)
    base = WindowStats.pooled([w, w], T0 - 2 * W, 2 * W)
    assert evaluate_negative(w, base, CFG).arm is False


def test_a_crash_between_alert_and_state_write_re_raises_the_same_alert():
    obs = shaped("a", [0.3] * 12 + [0.9] * 2)
    agg = MoodAggregator({}, CFG)
    for i, o in enumerate(obs):  # noqa: B007 - the index of the alerting post is used after the break
        result = agg.process(o)
        if result.alerts:
            break
        agg.apply(result)
    first = result.alerts[0]
    # the process died before applying: nothing of that step is stored, the post comes again
    again = agg.process(obs[i])
    assert [a.alert_id for a in again.alerts] == [first.alert_id]
    agg.apply(again)
    assert agg.process(obs[i]).status == "duplicate"
    rest = [a for o in obs[i + 1 :] for a in agg.process_and_apply(o).alerts]
    assert rest == []


def test_batches_give_the_same_alerts_and_state_with_fewer_writes():
    obs = stream(9, spike=("ch0", 18, 2, 0.9), duplicates=0.1)
    one, alerts_one = run(obs)
    batched = MoodAggregator({}, CFG, now=lambda: datetime(2024, 1, 1, tzinfo=UTC))
    alerts_batched, writes_one, writes_batched = [], 0, 0
    for i in range(0, len(obs), 97):
        result = batched.process_many(obs[i : i + 97])
        alerts_batched += result.alerts
        writes_batched += len(result.writes)
        batched.apply(result)
    probe = MoodAggregator({}, CFG)
    for o in obs:
        writes_one += len(probe.process_and_apply(o).writes)
    assert [a.alert_id for a in alerts_batched] == [a.alert_id for a in alerts_one] and len(alerts_one) == 1
    assert batched.store == one.store
    assert writes_batched * 3 < writes_one
