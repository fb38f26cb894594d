"""`moodwatch analyze --posts FILE.jsonl`: PostV1 lines (image + text) through the Analyzer, no broker, no store.

Each line is a PostV1 JSON with ``image.path`` (absolute, or relative to the working directory or to the
JSONL's folder) or ``image.b64``; URLs are not fetched here. Posts are analysed in batches, text and
image together, and each gets one output line: the AnalysisResultV2 the stream worker would store (the
thumbnail left out), or ``{"post_id", "line", "error", "message"}`` for a post that cannot be analysed.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import typer

from pipelines.text import PostText
from schemas.posts import PostError, PostV1, parse_post
from schemas.results import AnalysisResultV2, StageTimings


def _image_bytes(post: PostV1, base: Path) -> bytes:
    if post.image.b64 is not None:
        return base64.b64decode(post.image.b64)
    if post.image.path is None:
        raise FileNotFoundError("image.url is not fetched by `analyze --posts`; give image.path or image.b64")
    path = Path(post.image.path)
    for candidate in (path, base / path):
        if candidate.is_file():
            return candidate.read_bytes()
    raise FileNotFoundError(f"image file not found: {post.image.path} (also looked under {base})")


def _lines(posts_file: Path) -> Iterator[tuple[int, str]]:
    with posts_file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                yield number, line


def analyze_posts(posts_file: Path, analyzer, settings, batch_size: int = 16) -> int:
    """Writes one JSON line per post to stdout; returns the exit code (1 if any post failed)."""
    from workers.adapters.images import ImageError, decode_image
    from workers.analyzer.worker import in_source_pixels

    base, failed = posts_file.parent, False
    batch: list[tuple[int, PostV1, object, float]] = []

    def fail(number: int, post_id: str | None, exc: Exception) -> None:
        nonlocal failed
        failed = True
        typer.echo(json.dumps({"post_id": post_id, "line": number, "error": type(exc).__name__, "message": str(exc)}))

    def flush() -> None:
        if not batch:
            return
        started = time.monotonic()
        analyses = analyzer.analyze(
            [image.rgb for _, _, image, _ in batch], [PostText(post.text, post.lang) for _, post, _, _ in batch]
        )
        per_post = (time.monotonic() - started) / len(batch)
        now = datetime.now(UTC)
        for (_, post, image, decode_s), analysis in zip(batch, analyses):
            result = AnalysisResultV2.from_analysis(
                post,
                in_source_pixels(analysis, image),
                analyzed_at=now,
                model_versions=analyzer.versions,
                timings=StageTimings(
                    decode_seconds=decode_s, analyze_seconds=per_post, total_seconds=decode_s + per_post
                ),
            )
            typer.echo(result.model_dump_json())
        batch.clear()

    for number, line in _lines(posts_file):
        try:
            post = parse_post(line)
        except PostError as exc:
            fail(number, None, exc)
            continue
        try:
            started = time.monotonic()
            image = decode_image(
                _image_bytes(post, base),
                max_pixels=settings.image_max_pixels,
                formats=settings.image_formats,
                max_side=settings.image_analysis_max_side,
            )
        except (ImageError, OSError, ValueError) as exc:
            fail(number, post.post_id, exc)
            continue
        batch.append((number, post, image, time.monotonic() - started))
        if len(batch) >= batch_size:
            flush()
    flush()
    return 1 if failed else 0
