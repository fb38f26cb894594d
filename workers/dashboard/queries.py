"""What the dashboard asks Elasticsearch, and the shapes it hands the page.

Every view is one aggregation request (date_histogram -> terms -> filter / avg); the code here only
reshapes the buckets. No HTTP serving here: see server.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from schemas.emotions import EMOTION6_LABELS
from workers.common.event_time import SAFE_MAX, SAFE_MIN, clamp_to_safe_range
from workers.common.logs import get_logger
from workers.dashboard.settings import DashboardSettings

EMOTION6_NEGATIVE = ("anger", "disgust", "fear", "sadness")

log = get_logger("moodwatch.dashboard")

RANGES: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
# "nice" histogram intervals, seconds; the smallest giving at most MAX_BUCKETS buckets is used
INTERVALS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800, 2592000, 31536000)
MAX_BUCKETS = 120
MAX_CHANNELS = 8
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip
GALLERY_FIELDS = [
    "post_id", "channel", "created_at", "text", "image_ref", "image_width", "image_height", "polarity",
    "negative_score", "dominant_emotion", "regions", "evidence", "thumbnail.format",
]  # fmt: skip


class BadRequest(ValueError):
    pass


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    """A stored time as an aware datetime inside the range the page can do arithmetic on."""
    try:
        if isinstance(value, (int, float)):
            parsed = datetime.fromtimestamp(value / 1000, tz=UTC)
        else:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        text = str(value)
        parsed = SAFE_MAX if text[:1].isdigit() and len(text.split("-", 1)[0]) > 4 else SAFE_MIN
    return clamp_to_safe_range(parsed)


def pick_interval(span: timedelta, max_buckets: int = MAX_BUCKETS) -> int:
    seconds = max(1.0, span.total_seconds())
    for step in INTERVALS:
        if seconds / step <= max_buckets:
            return step
    return INTERVALS[-1]


class DashboardQueries:
    """The Elasticsearch side: each method is one request (two for the time bounds)."""

    def __init__(self, es: Any, settings: DashboardSettings) -> None:
        self.es = es
        self.settings = settings
        self.results = settings.es_results_index
        self.alerts = settings.es_alerts_index

    # -- time window ---------------------------------------------------------------------------
    def _edge(self, order: str) -> datetime | None:
        """The oldest / newest trusted event time in the store. Results whose created_at lies outside
        the event-time bounds (written before the bounds existed, or by another producer) are left out
        of the anchoring, so one absurd date cannot move the time axis."""
        bounds = self.settings.event_time_bounds()
        latest = datetime.now(UTC) + bounds.max_future_skew
        trusted = {"range": {"created_at": {"gte": _iso(bounds.floor), "lte": _iso(latest)}}}
        resp = self.es.search(
            index=self.results, size=1, query=trusted, sort=[{"created_at": order}], source_includes=["created_at"]
        )
        hits = resp["hits"]["hits"]
        return _parse_time(hits[0]["_source"]["created_at"]) if hits else None

    def bounds(self, range_name: str) -> tuple[datetime, datetime, int] | None:
        if range_name not in RANGES:
            raise BadRequest(f"range must be one of {', '.join(RANGES)}")
        newest = self._edge("desc")
        if newest is None:
            return None
        span = RANGES[range_name]
        oldest = None
        if span is None:
            oldest = self._edge("asc") or newest
            span = max(newest - oldest, timedelta(minutes=1))
        interval = pick_interval(span, MAX_BUCKETS - 2)  # the edges are rounded out by up to 2 buckets
        end_epoch = (int(newest.timestamp()) // interval + 1) * interval
        end = datetime.fromtimestamp(end_epoch, tz=UTC)
        first = oldest if oldest is not None else end - span
        start = datetime.fromtimestamp((int(first.timestamp()) // interval) * interval, tz=UTC)
        return start, end, interval

    def _time_filter(self, start: datetime, end: datetime, channels: list[str] | None = None) -> dict[str, Any]:
        filters: list[dict[str, Any]] = [{"range": {"created_at": {"gte": _iso(start), "lt": _iso(end)}}}]
        if channels:
            filters.append({"terms": {"channel": channels}})
        return {"bool": {"filter": filters}}

    def _histogram(self, start: datetime, end: datetime, interval: int, aggs: dict[str, Any]) -> dict[str, Any]:
        return {
            "date_histogram": {
                "field": "created_at",
                "fixed_interval": f"{interval}s",
                "min_doc_count": 0,
                "extended_bounds": {"min": _iso(start), "max": _iso(end - timedelta(seconds=interval))},
            },
            "aggs": aggs,
        }

    # -- the views -----------------------------------------------------------------------------
    def timeline(self, range_name: str, channels: list[str] | None = None) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "interval_s": None, "buckets": [], "channels": []}
        start, end, interval = b
        per_channel = {
            "terms": {"field": "channel", "size": MAX_CHANNELS},
            "aggs": {
                "negative": {"filter": {"term": {"polarity": "negative"}}},
                "mean_negative_score": {"avg": {"field": "negative_score"}},
            },
        }
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end, channels),
            aggs={
                "top_channels": {"terms": {"field": "channel", "size": MAX_CHANNELS}},
                "over_time": self._histogram(start, end, interval, {"channel": per_channel}),
            },
        )
        aggs = resp["aggregations"]
        top = [c["key"] for c in aggs["top_channels"]["buckets"]]
        buckets = []
        for bucket in aggs["over_time"]["buckets"]:
            row: dict[str, Any] = {"t": _iso(_parse_time(bucket["key"])), "count": bucket["doc_count"], "channels": {}}
            for cb in bucket["channel"]["buckets"]:
                n = cb["doc_count"]
                row["channels"][cb["key"]] = {
                    "count": n,
                    "negative": cb["negative"]["doc_count"],
                    "negative_share": cb["negative"]["doc_count"] / n if n else None,
                    "mean_negative_score": cb["mean_negative_score"]["value"],
                }
            buckets.append(row)
        return {
            "range": range_name, "start": _iso(start), "end": _iso(end), "interval_s": interval,
            "channels": top, "buckets": buckets,
        }  # fmt: skip

    def emotions(self, range_name: str, channel: str | None = None) -> dict[str, Any]:
        """The emotion mix over Emotion6's labels: the distribution measured against human judgements (README,
        "Emotion output"); results from before schema v2 have none and are left out of the averages."""
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "interval_s": None, "buckets": [], "emotions": list(EMOTION6_LABELS)}
        start, end, interval = b
        avgs = {e: {"avg": {"field": f"emotion6.{e}"}} for e in EMOTION6_LABELS}
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end, [channel] if channel else None),
            aggs={"over_time": self._histogram(start, end, interval, avgs)},
        )
        buckets = [
            {
                "t": _iso(_parse_time(bucket["key"])),
                "count": bucket["doc_count"],
                "mean": {e: bucket[e]["value"] for e in EMOTION6_LABELS},
            }
            for bucket in resp["aggregations"]["over_time"]["buckets"]
        ]
        return {
            "range": range_name, "start": _iso(start), "end": _iso(end), "interval_s": interval, "channel": channel,
            "emotions": list(EMOTION6_LABELS), "negative_emotions": sorted(EMOTION6_NEGATIVE), "buckets": buckets,
        }  # fmt: skip

    def channels(self, range_name: str) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "channels": []}
        start, end, _ = b
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end),
            aggs={
                "channel": {
                    "terms": {"field": "channel", "size": 50},
                    "aggs": {
                        "negative": {"filter": {"term": {"polarity": "negative"}}},
                        "neutral": {"filter": {"term": {"polarity": "neutral"}}},
                        "mean_negative_score": {"avg": {"field": "negative_score"}},
                        "dominant": {"terms": {"field": "dominant_emotion6", "size": 1}},
                    },
                }
            },
        )
        out = []
        for cb in resp["aggregations"]["channel"]["buckets"]:
            n = cb["doc_count"]
            dom = cb["dominant"]["buckets"]
            out.append({
                "channel": cb["key"], "count": n, "negative": cb["negative"]["doc_count"],
                "neutral": cb["neutral"]["doc_count"],
                "negative_share": cb["negative"]["doc_count"] / n if n else None,  # of all posts, neutral included
                "mean_negative_score": cb["mean_negative_score"]["value"],
                "dominant_emotion": dom[0]["key"] if dom else None,
            })  # fmt: skip
        return {"range": range_name, "start": _iso(start), "end": _iso(end), "channels": out}

    def alerts_list(self, range_name: str, size: int = 50) -> dict[str, Any]:
        b = self.bounds(range_name)
        query: dict[str, Any] = {"match_all": {}}
        if b is not None and RANGES[range_name] is not None:
            start, end, _ = b
            query = {"range": {"window_start": {"gte": _iso(start), "lt": _iso(end)}}}
        try:
            resp = self.es.search(index=self.alerts, size=size, query=query, sort=[{"window_start": "desc"}])
        except Exception as exc:  # the alerts index may not exist before the first alert
            if getattr(exc, "status_code", None) == 404:
                return {"range": range_name, "alerts": []}
            raise
        return {"range": range_name, "alerts": [h["_source"] for h in resp["hits"]["hits"]]}

    def gallery(self, range_name: str, channel: str | None, size: int, image_url) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "posts": []}
        start, end, _ = b
        query = self._time_filter(start, end, [channel] if channel else None)
        query["bool"]["filter"].append({"term": {"polarity": "negative"}})
        resp = self.es.search(
            index=self.results, size=size, query=query, sort=[{"created_at": "desc"}], source_includes=GALLERY_FIELDS
        )
        posts = []
        for hit in resp["hits"]["hits"]:
            doc = hit["_source"]
            doc["regions"] = sorted(doc.get("regions") or [], key=lambda r: -r.get("score", 0))
            doc["image_url"] = image_url(doc)
            posts.append(doc)
        return {"range": range_name, "posts": posts}

    def image_ref(self, post_id: str) -> str | None:
        try:
            resp = self.es.get(index=self.results, id=post_id, source_includes=["image_ref"])
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise
        return resp["_source"].get("image_ref")


def local_image_path(image_ref: str | None, root: Path | None) -> Path | None:
    """The file behind a ``file:PATH`` ref if it is an existing image file under ``root``; else None."""
    if not image_ref or root is None or not image_ref.startswith("file:"):
        return None
    try:
        path = Path(image_ref[len("file:") :]).resolve(strict=True)
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
        return None
    return path
