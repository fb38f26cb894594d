"""One result with an absurd created_at must not blind a channel: results -> Repartition -> step, in memory.

Before event-time bounds, a result dated 2100 (or only 11.6 days ahead) moved the channel's newest
window so far that the next posts counted as late and a planted negative spike raised no alert.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import make_result
from tests.unit.test_aggregator_step import SPIKE_CHANNEL, Fakes, batches, spike_stream
from workers.aggregator.detection import Observation
from workers.aggregator.repartition import Repartition
from workers.common.event_time import EventTimeBounds

BOUNDS = EventTimeBounds(max_future_skew=timedelta(minutes=5), floor=datetime(2000, 1, 1, tzinfo=UTC))


def results_of_the_spike_stream() -> list[bytes]:
    """The planted-spike stream as post-sentiment values, each analysed 2 s after it was posted."""
    out = []
    for raw in spike_stream():
        obs = Observation.from_dict(json.loads(raw))
        created = datetime.fromtimestamp(obs.ts, UTC)
        result = make_result(
            obs.post_id, channel=obs.channel, negative=0.9 if obs.negative else 0.1, created_at=created
        )
        out.append(result.model_dump_json().encode())
    return out


def with_hostile_post(values: list[bytes], at: int, claimed: datetime) -> list[bytes]:
    neighbour = json.loads(values[at])
    seen = datetime.fromisoformat(neighbour["analyzed_at"])
    hostile = make_result("hostile", channel=SPIKE_CHANNEL, negative=0.1, created_at=claimed, analyzed_at=seen)
    return values[:at] + [hostile.model_dump_json().encode()] + values[at:]


def aggregate(values: list[bytes]) -> Fakes:
    fakes = Fakes()
    forwarded: list[bytes] = []

    async def send(key: bytes, value: bytes) -> None:
        forwarded.append(value)

    repartition = Repartition(send, fakes.metrics, BOUNDS)
    for raw in values:
        asyncio.run(repartition.forward(raw))
    for batch in batches(forwarded):
        fakes.run(batch)
    return fakes


CLEAN = aggregate(results_of_the_spike_stream())


def test_the_clean_stream_raises_the_planted_spike():
    assert [(a.channel, a.kind) for a in CLEAN.published] == [(SPIKE_CHANNEL, "negative_spike")]


def test_a_post_dated_2100_neither_hides_the_spike_nor_makes_later_posts_late():
    values = results_of_the_spike_stream()
    fakes = aggregate(with_hostile_post(values, len(values) // 3, datetime(2100, 1, 1, tzinfo=UTC)))
    assert [a.alert_id for a in fakes.published] == [a.alert_id for a in CLEAN.published]
    assert fakes.sample("moodwatch_aggregator_observations_total", status="late") == 0
    assert fakes.sample("moodwatch_aggregator_event_time_clamped_total", reason="future") == 1
    assert fakes.sample("moodwatch_aggregator_event_time_seconds") < datetime(2030, 1, 1, tzinfo=UTC).timestamp()


@settings(max_examples=40, deadline=None)
@given(
    claimed=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
    position=st.floats(min_value=0.0, max_value=0.99),
)
def test_whatever_one_post_claims_the_channel_raises_the_same_alerts(claimed, position):
    values = results_of_the_spike_stream()
    fakes = aggregate(with_hostile_post(values, int(position * len(values)), claimed))
    assert [a.alert_id for a in fakes.published] == [a.alert_id for a in CLEAN.published]
    late = fakes.sample("moodwatch_aggregator_observations_total", status="late")
    assert late <= 1, late  # at most the hostile post itself, when its (trusted) claim is older than the windows
