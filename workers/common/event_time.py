"""Event time with bounds: a post's ``created_at`` is producer data and producers' clocks are wrong.

A claimed time more than ``max_future_skew`` ahead of the time we see the post, or before
``floor``, is not trusted: the post is placed at the time it was seen (ingest / processing time)
and flagged, so that no single post can move a channel's windows, its watermark or a dashboard's
time axis. Pure: no I/O, the caller passes the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Earliest and latest instants every consumer of a result can do arithmetic on: Python datetimes
# stop at year 9999 and Elasticsearch's date_histogram is asked for spans of at most a few years.
SAFE_MIN = datetime(1970, 1, 1, tzinfo=UTC)
SAFE_MAX = datetime(9000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class BoundedTime:
    at: datetime  # the time to use: the claim when trusted, else the time the post was seen
    clamped: bool  # True when the claim was not trusted
    reason: str | None = None  # "future" | "before_floor"


@dataclass(frozen=True)
class EventTimeBounds:
    max_future_skew: timedelta = timedelta(minutes=5)
    floor: datetime = datetime(2000, 1, 1, tzinfo=UTC)

    def bound(self, claimed: datetime, seen_at: datetime) -> BoundedTime:
        """``claimed`` when ``floor <= claimed <= seen_at + max_future_skew``, else ``seen_at`` flagged."""
        if claimed.tzinfo is None:
            raise ValueError("event times must be timezone-aware")
        if claimed < self.floor:
            return BoundedTime(seen_at, True, "before_floor")
        if seen_at <= SAFE_MAX - self.max_future_skew and claimed > seen_at + self.max_future_skew:
            return BoundedTime(seen_at, True, "future")
        return BoundedTime(claimed, False)


def clamp_to_safe_range(value: datetime) -> datetime:
    """``value`` moved into [SAFE_MIN, SAFE_MAX] (for times read back from a store)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return min(max(value, SAFE_MIN), SAFE_MAX)
