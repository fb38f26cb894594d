"""Precision of the model and of the alerts per channel, from the moderators' reviews (pure functions).

Only the latest labelled review of a post counts (a later review supersedes an earlier one; an
escalation carries no label and is counted apart).

- model precision: of the reviewed posts the model called negative, the share a person also called
  negative (TP / (TP + FP));
- alert precision: an alert is judged once any of its posts is reviewed; it is confirmed when more
  than half of its reviewed posts support it (negative spike: the person says negative; emotion
  shift: the person's dominant emotion is the alert's); precision = confirmed / judged alerts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any


def latest_labelled(reviews_newest_first: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for review in reviews_newest_first:
        if review.get("human_polarity") is not None:
            latest.setdefault(review["post_id"], review)
    return latest


def alert_kind(alert_id: str) -> str:
    """Alert ids are channel:kind:window-start (workers/aggregator/detection.alert_id)."""
    parts = alert_id.rsplit(":", 2)
    return parts[1] if len(parts) == 3 else "negative_spike"


def supports(review: dict[str, Any], alert_id: str, alerts: dict[str, dict[str, Any]]) -> bool:
    if alert_kind(alert_id) == "emotion_shift":
        wanted = (alerts.get(alert_id) or {}).get("dominant_emotion")
        return wanted is not None and review.get("human_dominant_emotion") == wanted
    return review.get("human_polarity") == "negative"


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def channel_precision(
    reviews_newest_first: Iterable[dict[str, Any]], alerts: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per channel with reviews: counts, model precision and alert precision (None = no data)."""
    alerts = alerts or {}
    reviews = list(reviews_newest_first)
    latest = latest_labelled(reviews)
    escalated = defaultdict(set)
    reviewed_posts = defaultdict(set)
    for review in reviews:
        reviewed_posts[review["channel"]].add(review["post_id"])
        if review.get("action") == "escalate":
            escalated[review["channel"]].add(review["post_id"])
    rows: dict[str, dict[str, Any]] = {
        channel: {"channel": channel, "reviews": 0, "reviewed_posts": len(posts), "labelled_posts": 0,
                  "escalated_posts": len(escalated[channel]), "flagged_reviewed": 0, "flagged_confirmed": 0,
                  "alerts_judged": 0, "alerts_confirmed": 0}
        for channel, posts in reviewed_posts.items()
    }  # fmt: skip
    for review in reviews:
        rows[review["channel"]]["reviews"] += 1
    votes: dict[str, list[bool]] = defaultdict(list)
    for review in latest.values():
        row = rows[review["channel"]]
        row["labelled_posts"] += 1
        if review["model_polarity"] == "negative":
            row["flagged_reviewed"] += 1
            row["flagged_confirmed"] += review["human_polarity"] == "negative"
        for alert_id in review.get("alert_ids") or []:
            votes[alert_id].append(supports(review, alert_id, alerts))
    for alert_id, vote in votes.items():
        channel = (alerts.get(alert_id) or {}).get("channel") or alert_id.rsplit(":", 2)[0]
        row = rows.setdefault(channel, {"channel": channel, "reviews": 0, "reviewed_posts": 0, "labelled_posts": 0,
                                        "escalated_posts": 0, "flagged_reviewed": 0, "flagged_confirmed": 0,
                                        "alerts_judged": 0, "alerts_confirmed": 0})  # fmt: skip
        row["alerts_judged"] += 1
        row["alerts_confirmed"] += sum(vote) * 2 > len(vote)
    for row in rows.values():
        row["model_precision"] = _share(row["flagged_confirmed"], row["flagged_reviewed"])
        row["alert_precision"] = _share(row["alerts_confirmed"], row["alerts_judged"])
    return sorted(rows.values(), key=lambda r: r["channel"])
