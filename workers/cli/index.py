"""`moodwatch index ...`: build and inspect retrieval indexes (a typer sub-app).

Mount with ``app.add_typer(index_app, name="index")`` in workers/cli.py.

    moodwatch index build --corpus seed --corpus goemotions --corpus isear \
        --data-dir ../shared/data --out artifacts/index/full --index-type flat [--max-per-emotion N]
    moodwatch index info artifacts/index/full
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Build and inspect the emotion-sentence retrieval index.", no_args_is_help=True)
index_app = app


class Corpus(str, Enum):
    seed = "seed"
    goemotions = "goemotions"
    isear = "isear"


class IndexType(str, Enum):
    flat = "flat"
    hnsw = "hnsw"
    ivf = "ivf"


def _configure_logging(level: str, as_json: bool | None) -> None:
    try:
        from workers.common.logs import configure_logging

        configure_logging(level, as_json)
        import logging

        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - logs module is part of the project
        import logging

        logging.basicConfig(level=level.upper())


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@app.command("build")
def build(
    corpus: list[Corpus] = typer.Option(
        ["seed"], "--corpus", "-c", help="corpora to include (repeat): seed, goemotions, isear"
    ),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="shared data folder (holds text/); default $MOODWATCH_DATA_DIR or ../shared/data"
    ),
    out: Path = typer.Option(Path("artifacts/index/full"), "--out", "-o", help="output folder"),
    index_type: IndexType = typer.Option(IndexType.flat, "--index-type", help="flat (exact) | hnsw | ivf"),
    max_per_emotion: Optional[int] = typer.Option(
        None, "--max-per-emotion", min=1, help="balanced cap per Mikels emotion (seed sentences kept first)"
    ),
    text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="default: MOODWATCH_TEXT_ENCODER setting"),
    device: Optional[str] = typer.Option(None, "--device", help="default: MOODWATCH_DEVICE setting"),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Build a sentence database + FAISS index from the chosen corpora into --out."""
    from workers.common.settings import AnalysisSettings

    settings = AnalysisSettings()
    _configure_logging(settings.log_level, settings.log_json)
    from pipelines.retrieval import CorpusNotFoundError, build_database, check_corpus_files, default_data_dir

    names = [c.value for c in corpus]
    ddir = data_dir if data_dir is not None else default_data_dir()
    try:
        check_corpus_files(names, ddir)
    except CorpusNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    from models.encoders import EncoderNotFoundError, load_text_encoder

    spec = text_encoder or settings.text_encoder
    dev = device or settings.device
    try:
        enc = load_text_encoder(spec, dev)
    except EncoderNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    t0 = time.perf_counter()
    db = build_database(
        names,
        ddir,
        enc,
        out,
        index_type.value,
        max_per_emotion=max_per_emotion,
        progress=progress,
        batch_size=batch_size,
    )
    elapsed = time.perf_counter() - t0
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "version": db.version,
                "count": len(db),
                "index_type": db.index_type,
                "emotions": db.emotion_counts(),
                "sources": db.source_counts(),
                "seconds": round(elapsed, 2),
                "bytes": _dir_size(out),
            }
        )
    )


@app.command("info")
def info(
    directory: Path = typer.Argument(..., help="index folder (holds manifest.json)"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest as JSON"),
) -> None:
    """Show what an index folder holds."""
    from pipelines.retrieval import IndexMismatchError, read_manifest

    try:
        m = read_manifest(directory)
    except IndexMismatchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({**m, "bytes": _dir_size(directory)}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    head = Table(show_header=False, box=None)
    head.add_row("folder", str(directory))
    head.add_row("version", m["version"])
    head.add_row("created", m.get("created_at", "?"))
    head.add_row("sentences", str(m["count"]))
    head.add_row("index", f"{m['index']['type']} ({m['index']['metric']}) {m['index'].get('params') or ''}")
    head.add_row("text encoder", f"{m['text_encoder']['name']} ({m['text_encoder']['dim']}-d features)")
    emb = m["embedding_encoder"]
    head.add_row(
        "retrieval space", f"{emb['name']} ({emb['dim']}-d){' = features' if emb.get('shared_with_features') else ''}"
    )
    head.add_row("size", f"{_dir_size(directory) / 1e6:.1f} MB")
    console.print(head)
    counts = Table("emotion", "sentences")
    for emotion, n in m["emotions"].items():
        counts.add_row(emotion, str(n))
    console.print(counts)
    sources = Table("source", "sentences")
    for source, n in m["sources"].items():
        sources.add_row(source, str(n))
    console.print(sources)


if __name__ == "__main__":  # pragma: no cover
    app()
