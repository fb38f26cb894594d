"""The review queue: the posts behind an alert, or of a channel and time range, most-in-need first.

Priority (0..1) = 0.5 * negative score + 0.3 * uncertainty + 0.2 * alert membership, where
uncertainty = 1 - (top probability - runner-up) of the polarity probabilities. Posts a person has
already labelled go after the open ones (escalated posts stay open). The candidates are the
CANDIDATES most negative posts of the selection (one filtered search); ordering happens here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from workers.adapters.review_store import ReviewStore, not_found
from workers.dashboard.queries import GALLERY_FIELDS, BadRequest, DashboardQueries, _iso, _parse_time

CANDIDATES = 500
QUEUE_FIELDS = [*GALLERY_FIELDS, "polarity_probs", "emotions", "model_versions.heads"]
WEIGHTS = {"negative": 0.5, "uncertain": 0.3, "alert": 0.2}


def uncertainty(polarity_probs: dict[str, float] | None) -> float:
    probs = sorted((polarity_probs or {}).values(), reverse=True)
    if len(probs) < 2:
        return 0.0
    return max(0.0, min(1.0, 1.0 - (probs[0] - probs[1])))


def priority(doc: dict[str, Any], in_alert: bool) -> tuple[float, list[str]]:
    """The score and the reasons a person reads next to it."""
    neg = float(doc.get("negative_score") or 0.0)
    unc = uncertainty(doc.get("polarity_probs"))
    score = WEIGHTS["negative"] * neg + WEIGHTS["uncertain"] * unc + WEIGHTS["alert"] * in_alert
    reasons = [f"negative {neg:.0%}"]
    if unc >= 0.5:
        reasons.append("model unsure")
    if in_alert:
        reasons.append("in an alert")
    return round(score, 4), reasons


def alerts_covering(alerts: list[dict[str, Any]], channel: str, created_at: datetime) -> list[str]:
    return [
        a["alert_id"] for a in alerts
        if a["channel"] == channel and _parse_time(a["window_start"]) <= created_at < _parse_time(a["window_end"])
    ]  # fmt: skip


class ReviewQueue:
    def __init__(self, queries: DashboardQueries, store: ReviewStore) -> None:
        self.queries = queries
        self.store = store
        self.es = queries.es

    def alert(self, alert_id: str) -> dict[str, Any]:
        try:
            return self.es.get(index=self.queries.alerts, id=alert_id)["_source"]
        except Exception as exc:
            if not_found(exc):
                raise BadRequest(f"no alert {alert_id!r}") from exc
            raise

    def _alerts_in(self, start: datetime, end: datetime, channel: str | None) -> list[dict[str, Any]]:
        filters: list[dict[str, Any]] = [{"range": {"window_end": {"gt": _iso(start)}}},
                                         {"range": {"window_start": {"lte": _iso(end)}}}]  # fmt: skip
        if channel:
            filters.append({"term": {"channel": channel}})
        try:
            resp = self.es.search(index=self.queries.alerts, size=1000, query={"bool": {"filter": filters}})
        except Exception as exc:
            if not_found(exc):
                return []
            raise
        return [h["_source"] for h in resp["hits"]["hits"]]

    def alerts_of_post(self, channel: str, created_at: datetime) -> list[dict[str, Any]]:
        """The alerts of the post's channel whose window holds its creation time."""
        return self._alerts_in(created_at, created_at, channel)

    def posts(
        self, *, alert_id: str | None = None, channel: str | None = None, range_name: str = "24h", size: int = 50,
        image_url=None, thumbnail_url=None,
    ) -> dict[str, Any]:  # fmt: skip
        if alert_id:
            alert = self.alert(alert_id)
            channel, start, end = alert["channel"], _parse_time(alert["window_start"]), _parse_time(alert["window_end"])
            alerts = [alert]
        else:
            bounds = self.queries.bounds(range_name)
            if bounds is None:
                return {"alert": None, "channel": channel, "posts": [], "candidates": 0}
            start, end, _ = bounds
            alerts = self._alerts_in(start, end, channel)
        query = self.queries._time_filter(start, end, [channel] if channel else None)
        resp = self.es.search(index=self.queries.results, size=CANDIDATES, query=query, source_includes=QUEUE_FIELDS,
                              sort=[{"negative_score": "desc"}, {"created_at": "desc"}])  # fmt: skip
        docs = [h["_source"] for h in resp["hits"]["hits"]]
        history = self.store.reviews_of_posts(d["post_id"] for d in docs)
        posts = []
        for doc in docs:
            doc["alert_ids"] = alerts_covering(alerts, doc["channel"], _parse_time(doc["created_at"]))
            doc["priority"], doc["reasons"] = priority(doc, bool(doc["alert_ids"]))
            doc["reviews"] = history.get(doc["post_id"], [])[:5]
            doc["status"] = _status(doc["reviews"])
            doc["regions"] = sorted(doc.get("regions") or [], key=lambda r: -r.get("score", 0))
            doc["image_url"] = image_url(doc) if image_url else None
            doc["thumbnail_url"] = thumbnail_url(doc) if thumbnail_url else None
            doc.pop("thumbnail", None)
            posts.append(doc)
        posts.sort(key=lambda d: (d["status"] in ("confirmed", "overturned"), -d["priority"], d["post_id"]))
        return {
            "alert": alerts[0] if alert_id else None, "channel": channel, "start": _iso(start), "end": _iso(end),
            "candidates": len(docs), "open": sum(p["status"] in ("open", "escalated") for p in posts),
            "posts": posts[:size],
        }  # fmt: skip


STATUS = {"confirm": "confirmed", "overturn": "overturned", "escalate": "escalated"}


def _status(reviews_newest_first: list[dict[str, Any]]) -> str:
    """The latest decision on the post: open, confirmed, overturned or escalated."""
    return STATUS[reviews_newest_first[0]["action"]] if reviews_newest_first else "open"
