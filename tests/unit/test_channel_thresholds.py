"""Per-channel spike thresholds (set by admins in the dashboard) steer the pure detector: a channel
with a stricter min_effect stays quiet where the global thresholds alert, a looser one alerts where the
global ones stay quiet, and other channels keep the global thresholds."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from tests.unit.test_spikes import CFG, stream
from workers.aggregator.detection import MoodAggregator


def alerts_with(overrides: dict[str, dict], observations) -> list[tuple[str, str]]:
    now = lambda: datetime(2024, 1, 1, tzinfo=UTC)  # noqa: E731
    agg = MoodAggregator({}, CFG, now=now, overrides=lambda channel: overrides.get(channel, {}))
    out = []
    for obs in observations:
        out.extend((a.channel, a.kind) for a in agg.process_and_apply(obs).alerts)
    return out


def test_a_stricter_channel_threshold_silences_that_channel_only():
    other = [replace(o, channel=f"x{o.channel}", post_id=f"x{o.post_id}")
             for o in stream(2, spike=("ch3", 20, 3, 0.85))]  # fmt: skip
    obs = sorted(stream(1, spike=("ch2", 20, 3, 0.85)) + other, key=lambda o: o.ts)
    assert ("ch2", "negative_spike") in alerts_with({}, obs)
    quiet = alerts_with({"ch2": {"min_effect": 0.9}}, obs)
    assert ("ch2", "negative_spike") not in quiet and ("xch3", "negative_spike") in quiet


def test_a_looser_channel_threshold_catches_a_smaller_spike():
    obs = stream(4, rate=120, spike=("ch1", 20, 3, 0.45))  # +15 points over a 30% baseline: below the 0.25 effect
    assert alerts_with({}, obs) == []
    loose = alerts_with({"ch1": {"min_effect": 0.1, "alpha_arm": 1e-3}}, obs)
    assert ("ch1", "negative_spike") in loose and {c for c, _ in loose} == {"ch1"}


def test_overrides_that_break_the_hysteresis_fall_back_to_the_global_config():
    agg = MoodAggregator({}, CFG, overrides=lambda c: {"alpha_arm": 0.5})  # above alpha_disarm
    assert agg.spike_config("ch1") is CFG
    agg = MoodAggregator({}, CFG, overrides=lambda c: {"min_count": 3})
    assert agg.spike_config("ch1").min_count == 3 and agg.spike_config("ch1").alpha_arm == CFG.alpha_arm
