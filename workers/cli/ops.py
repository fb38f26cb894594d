"""Operations on the dead-letter topic: `moodwatch dlq show` and `moodwatch dlq replay`.

Replaying re-publishes the original key and bytes of dead-lettered posts to the posts topic (after a
fix: a schema upgrade, a reachable image host, a bigger limit). It reads the DLQ in its own consumer
group and commits as it goes, so a replay interrupted halfway resumes where it stopped; replaying a
post twice is harmless because results are written with `_id = post_id`.
"""

from __future__ import annotations

from typing import Optional

import typer
from kafka import KafkaConsumer
from rich.console import Console
from rich.table import Table

from workers.adapters.kafka_io import make_producer, security_options
from workers.common.settings import KafkaSettings, ObservabilitySettings

dlq_app = typer.Typer(help="Inspect and replay the dead-letter topic.", no_args_is_help=True)
console = Console()


class OpsSettings(KafkaSettings, ObservabilitySettings):
    """What the DLQ commands read: the broker and the topics."""


def _headers(record) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or [])}


def _consumer(settings: KafkaSettings, group_id: Optional[str]) -> KafkaConsumer:
    return KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap.split(","),
        group_id=group_id,
        # a group join alone takes about half the session timeout: wait that long before calling it empty
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000 + (settings.kafka_session_timeout_ms if group_id else 0),
        session_timeout_ms=settings.kafka_session_timeout_ms,
        **security_options(settings),
    )


def _matches(headers: dict[str, str], stage: Optional[str], error_class: Optional[str]) -> bool:
    return (stage is None or headers.get("stage") == stage) and (
        error_class is None or headers.get("error.class") == error_class
    )


@dlq_app.command("show")
def show(
    limit: int = typer.Option(50, help="messages to list"),
    stage: Optional[str] = typer.Option(None, help="only this stage (validate, fetch, decode, analyze, store)"),
    error_class: Optional[str] = typer.Option(None, help="only this error class"),
) -> None:
    """List dead-lettered posts with their reasons (reads from the start; commits nothing)."""
    settings = OpsSettings()
    consumer = _consumer(settings, None)
    table = Table(title=f"dead letters on {settings.dlq_topic}")
    for col in ("partition:offset", "key", "stage", "error", "message", "original"):
        table.add_column(col, overflow="fold")
    shown = 0
    try:
        for record in consumer:
            h = _headers(record)
            if not _matches(h, stage, error_class):
                continue
            table.add_row(
                f"{record.partition}:{record.offset}",
                (record.key or b"").decode("utf-8", "replace"),
                h.get("stage", ""),
                h.get("error.class", ""),
                h.get("error.message", "")[:200],
                f"{h.get('original.topic')}/{h.get('original.partition')}@{h.get('original.offset')}",
            )
            shown += 1
            if shown >= limit:
                break
    finally:
        consumer.close()
    console.print(table)


@dlq_app.command("replay")
def replay(
    stage: Optional[str] = typer.Option(None, help="only posts that failed at this stage"),
    error_class: Optional[str] = typer.Option(None, help="only posts that failed with this error class"),
    limit: Optional[int] = typer.Option(None, help="stop after replaying this many"),
    group_id: str = typer.Option("moodwatch-dlq-replay", help="consumer group that records replay progress"),
    dry_run: bool = typer.Option(False, "--dry-run", help="count what would be replayed; publish nothing"),
) -> None:
    """Re-publish dead-lettered posts to the posts topic (original key and bytes, with replay headers)."""
    settings = OpsSettings()
    consumer = _consumer(settings, None if dry_run else group_id)
    producer = None if dry_run else make_producer(settings)
    replayed = skipped = 0
    try:
        for record in consumer:
            h = _headers(record)
            if not _matches(h, stage, error_class):
                skipped += 1
                continue
            if producer is not None:
                headers = [
                    ("replayed.from", f"{record.topic}/{record.partition}@{record.offset}".encode()),
                    ("replayed.error.class", h.get("error.class", "").encode()),
                ]
                producer.send(
                    h.get("original.topic") or settings.posts_topic, key=record.key, value=record.value, headers=headers
                ).get(timeout=30)
                consumer.commit()
            replayed += 1
            if limit is not None and replayed >= limit:
                break
    finally:
        if producer is not None:
            producer.flush()
            producer.close()
        consumer.close()
    verb = "would replay" if dry_run else "replayed"
    console.print(f"{verb} {replayed} post(s); {skipped} did not match the filters")
