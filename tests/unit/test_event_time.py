"""Event-time bounds: any claimed created_at gives a usable time, and only sane claims are trusted."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.common.event_time import SAFE_MAX, SAFE_MIN, EventTimeBounds, clamp_to_safe_range

BOUNDS = EventTimeBounds(max_future_skew=timedelta(minutes=5), floor=datetime(2000, 1, 1, tzinfo=UTC))
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
any_aware = st.datetimes(timezones=st.just(UTC))
sane_now = st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))


@given(claimed=any_aware, seen_at=sane_now)
def test_the_bounded_time_is_the_claim_only_when_it_is_within_the_bounds(claimed, seen_at):
    got = BOUNDS.bound(claimed, seen_at)
    trusted = BOUNDS.floor <= claimed <= seen_at + BOUNDS.max_future_skew
    assert got.clamped is (not trusted)
    assert got.at == (claimed if trusted else seen_at)
    assert BOUNDS.floor <= got.at <= seen_at + BOUNDS.max_future_skew


@pytest.mark.parametrize(
    ("claimed", "reason"),
    [
        (datetime(9999, 12, 31, 23, 59, tzinfo=UTC), "future"),
        (datetime(2100, 1, 1, tzinfo=UTC), "future"),
        (NOW + timedelta(days=11, hours=14), "future"),
        (datetime(1, 1, 1, tzinfo=UTC), "before_floor"),
        (datetime(1999, 12, 31, tzinfo=UTC), "before_floor"),
    ],
)
def test_the_dates_that_blinded_a_channel_are_clamped_to_the_time_seen(claimed, reason):
    got = BOUNDS.bound(claimed, NOW)
    assert (got.at, got.clamped, got.reason) == (NOW, True, reason)


def test_a_small_skew_and_an_old_but_sane_post_are_trusted():
    assert BOUNDS.bound(NOW + timedelta(minutes=4), NOW).clamped is False
    assert BOUNDS.bound(datetime(2012, 5, 1, tzinfo=UTC), NOW).clamped is False


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        BOUNDS.bound(datetime(2026, 1, 1), NOW)


@given(value=st.datetimes(timezones=st.just(UTC)) | st.datetimes())
def test_clamp_to_safe_range_leaves_room_for_arithmetic(value):
    got = clamp_to_safe_range(value)
    assert SAFE_MIN <= got <= SAFE_MAX
    got + timedelta(days=365)  # never overflows
    got - timedelta(days=365)
