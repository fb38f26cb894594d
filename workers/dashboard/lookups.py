"""Single-document look-ups of the dashboard (a post's thumbnail, the verdict a review records, alerts by id)."""

from __future__ import annotations

from typing import Any

from workers.adapters.review_store import not_found
from workers.dashboard.settings import DashboardSettings

# what a review records of the model's verdict on a post
RESULT_FIELDS = ["post_id", "channel", "created_at", "polarity", "negative_score", "dominant_emotion", "image_ref",
                 "model_versions.heads"]  # fmt: skip


class Lookups:
    def __init__(self, es: Any, settings: DashboardSettings) -> None:
        self.es = es
        self.results = settings.es_results_index
        self.alerts = settings.es_alerts_index

    def _get(self, post_id: str, fields: list[str]) -> dict[str, Any] | None:
        try:
            return self.es.get(index=self.results, id=post_id, source_includes=fields)["_source"]
        except Exception as exc:
            if not_found(exc):
                return None
            raise

    def thumbnail(self, post_id: str) -> dict[str, Any] | None:
        """The stored thumbnail {format, width, height, data (base64)} of a post, if it has one."""
        return (self._get(post_id, ["thumbnail"]) or {}).get("thumbnail")

    def result(self, post_id: str) -> dict[str, Any] | None:
        return self._get(post_id, RESULT_FIELDS)

    def alerts_by_id(self, alert_ids: set[str]) -> dict[str, dict[str, Any]]:
        if not alert_ids:
            return {}
        try:
            resp = self.es.mget(index=self.alerts, ids=sorted(alert_ids))
        except Exception as exc:
            if not_found(exc):
                return {}
            raise
        return {d["_id"]: d["_source"] for d in resp["docs"] if d.get("found")}
