"""Elasticsearch side of the moderators' loop: the reviews and channel-thresholds indices.

Both are append-only audit trails. A review is stored with `op_type=create` under a fresh id, so a
second review of a post is a new document and an existing document can never be overwritten (the
store answers 409). Threshold changes are stored the same way; the newest change per channel is the
one in force. The dashboard writes both; the aggregator reads thresholds (workers/adapters/thresholds.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import structlog
from elasticsearch import ApiError, Elasticsearch

from schemas.es_templates import reviews_template, thresholds_template
from schemas.reviews import ChannelThresholdsV1, ReviewV1
from workers.adapters.elastic import install_index
from workers.common.settings import ElasticsearchSettings

log = structlog.get_logger(__name__)

PAGE = 1000


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def not_found(exc: Exception) -> bool:
    return getattr(exc, "status_code", None) == 404


class ReviewStore:
    """Reviews and threshold changes in Elasticsearch; every write waits until it is searchable."""

    def __init__(self, es: Elasticsearch, settings: ElasticsearchSettings) -> None:
        self.es = es
        self.reviews_index = settings.es_reviews_index
        self.thresholds_index = settings.es_thresholds_index

    def install(self) -> None:
        install_index(self.es, self.reviews_index, reviews_template(self.reviews_index))
        install_index(self.es, self.thresholds_index, thresholds_template(self.thresholds_index))

    # -- reviews -------------------------------------------------------------------------------
    def add_review(self, review: ReviewV1) -> None:
        """Store a new review; raises on a reused id (409) instead of overwriting the audit trail."""
        self.es.create(index=self.reviews_index, id=review.review_id, document=review.model_dump(mode="json"),
                       refresh="wait_for")  # fmt: skip

    def reviews_of_posts(self, post_ids: Iterable[str], *, limit: int = 10_000) -> dict[str, list[dict[str, Any]]]:
        """post_id -> its reviews, newest first (every review, not only the latest)."""
        ids = sorted(set(post_ids))
        out: dict[str, list[dict[str, Any]]] = {pid: [] for pid in ids}
        if not ids:
            return out
        for doc in self._scan({"terms": {"post_id": ids}}, limit=limit):
            out[doc["post_id"]].append(doc)
        return out

    def reviews(
        self, *, channel: str | None = None, since: datetime | None = None, until: datetime | None = None,
        limit: int = 10_000,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Reviews newest first, optionally of one channel and posts created in [since, until)."""
        filters: list[dict[str, Any]] = []
        if channel:
            filters.append({"term": {"channel": channel}})
        if since or until:
            span = {k: _iso(v) for k, v in (("gte", since), ("lt", until)) if v is not None}
            filters.append({"range": {"post_created_at": span}})
        return list(self._scan({"bool": {"filter": filters}}, limit=limit))

    def iter_reviews(self, *, channel: str | None = None, since: datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every review (newest first) for the export, paged with search_after."""
        filters: list[dict[str, Any]] = [{"term": {"channel": channel}}] if channel else []
        if since is not None:
            filters.append({"range": {"reviewed_at": {"gte": _iso(since)}}})
        yield from self._scan({"bool": {"filter": filters}}, limit=None)

    def _scan(self, query: dict[str, Any], *, limit: int | None) -> Iterator[dict[str, Any]]:
        after: list[Any] | None = None
        seen = 0
        while limit is None or seen < limit:
            size = PAGE if limit is None else min(PAGE, limit - seen)
            try:
                resp = self.es.search(index=self.reviews_index, query=query, size=size, search_after=after,
                                      sort=[{"reviewed_at": "desc"}, {"review_id": "asc"}])  # fmt: skip
            except ApiError as exc:
                if not_found(exc):  # no review yet and the index not installed: nothing to read
                    return
                raise
            hits = resp["hits"]["hits"]
            for hit in hits:
                yield hit["_source"]
            seen += len(hits)
            if len(hits) < size:
                return
            after = hits[-1]["sort"]

    # -- thresholds ----------------------------------------------------------------------------
    def add_thresholds(self, change: ChannelThresholdsV1) -> None:
        self.es.create(index=self.thresholds_index, id=change.change_id, document=change.model_dump(mode="json"),
                       refresh="wait_for")  # fmt: skip

    def latest_thresholds(self, *, limit: int = 10_000) -> dict[str, ChannelThresholdsV1]:
        """channel -> the change in force (the newest one)."""
        return latest_per_channel(self.es, self.thresholds_index, limit=limit)


def latest_per_channel(es: Elasticsearch, index: str, *, limit: int = 10_000) -> dict[str, ChannelThresholdsV1]:
    try:
        resp = es.search(index=index, size=limit, sort=[{"changed_at": "desc"}, {"change_id": "desc"}])
    except ApiError as exc:
        if not_found(exc):
            return {}
        raise
    latest: dict[str, ChannelThresholdsV1] = {}
    for hit in resp["hits"]["hits"]:
        change = ChannelThresholdsV1.model_validate(hit["_source"])
        latest.setdefault(change.channel, change)
    return latest
