"""`moodwatch reviews export`: the moderators' labels as JSONL for `moodwatch train --reviews`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Optional

import typer

from schemas.reviews import HumanLabel, ModelVerdict, ReviewExportV1
from workers.common.settings import ElasticsearchSettings

reviews_app = typer.Typer(help="The moderators' reviews: export them for training.", no_args_is_help=True)

POST_FIELDS = ["post_id", "channel", "created_at", "text", "image_ref", "thumbnail"]
MGET_CHUNK = 500


def export_records(es: Any, settings: ElasticsearchSettings, *, channel: str | None = None,
                   since: datetime | None = None) -> Iterator[ReviewExportV1]:  # fmt: skip
    """The latest labelled review of every reviewed post (escalations carry no label and are skipped), with the
    post's text, image reference and stored thumbnail."""
    from workers.adapters.review_store import ReviewStore

    latest: dict[str, dict[str, Any]] = {}
    for review in ReviewStore(es, settings).iter_reviews(channel=channel, since=since):
        if review.get("human_polarity") is not None:
            latest.setdefault(review["post_id"], review)
    ids = sorted(latest)
    for start in range(0, len(ids), MGET_CHUNK):
        chunk = ids[start : start + MGET_CHUNK]
        docs = es.mget(index=settings.es_results_index, ids=chunk, source_includes=POST_FIELDS)["docs"]
        posts = {d["_id"]: d["_source"] for d in docs if d.get("found")}
        for post_id in chunk:
            yield to_record(latest[post_id], posts.get(post_id))


def to_record(review: dict[str, Any], post: dict[str, Any] | None) -> ReviewExportV1:
    post = post or {}
    thumb = post.get("thumbnail") or {}
    return ReviewExportV1(
        post_id=review["post_id"], channel=review["channel"], created_at=review["post_created_at"],
        text=post.get("text"), image_ref=post.get("image_ref") or review["image_ref"],
        thumbnail_format=thumb.get("format"), thumbnail_b64=thumb.get("data"),
        label=HumanLabel(polarity=review["human_polarity"], dominant_emotion=review["human_dominant_emotion"]),
        model=ModelVerdict(polarity=review["model_polarity"], negative_score=review["model_negative_score"],
                           dominant_emotion=review["model_dominant_emotion"], heads=review.get("model_heads")),
        review_id=review["review_id"], reviewer=review["reviewer"], reviewed_at=review["reviewed_at"],
        action=review["action"], note=review.get("note"),
    )  # fmt: skip


@reviews_app.command("export")
def export(
    out: Optional[Path] = typer.Option(None, "--out", help="JSONL file to write (default: stdout)"),
    channel: Optional[str] = typer.Option(None, help="only this channel"),
    since: Optional[datetime] = typer.Option(None, help="only reviews made at or after this time (ISO 8601, UTC)"),
) -> None:
    """Write one JSON line per reviewed post: the post, its image reference and thumbnail, the human label."""

    from workers.adapters.elastic import make_es_client

    settings = ElasticsearchSettings()
    es = make_es_client(settings)
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    count = 0
    stream = out.open("w", encoding="utf-8") if out else sys.stdout
    try:
        for record in export_records(es, settings, channel=channel, since=since):
            stream.write(record.model_dump_json() + "\n")
            count += 1
    finally:
        if out:
            stream.close()
        es.close()
    typer.echo(f"exported {count} labelled post(s)" + (f" to {out}" if out else ""), err=True)
