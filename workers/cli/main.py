"""The `moodwatch` command line (typer)."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from workers.analyzer.settings import AnalyzerSettings
from workers.cli import benchmarks as _benchmarks  # noqa: F401  (registers eval mvsa / emotion6)
from workers.cli.dashboard import dashboard_app
from workers.cli.index import app as index_app
from workers.cli.ops import dlq_app
from workers.cli.reviews import reviews_app
from workers.cli.serving import app as triton_app
from workers.cli.train import eval_app, train
from workers.common.logs import configure_logging
from workers.common.settings import ObservabilitySettings

# The encoders are imported lazily by the commands; no hub is ever reached from here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(help="moodwatch: streaming visual sentiment for image posts.", no_args_is_help=True)


@app.callback()
def _configure_logs() -> None:
    """Logs of every command go through the structlog stream (JSON when stderr is not a TTY) at
    MOODWATCH_LOG_LEVEL; commands that read more settings configure them again the same way."""
    observability = ObservabilitySettings()
    configure_logging(observability.log_level, observability.log_json)


def _settings(**overrides) -> AnalyzerSettings:
    settings = AnalyzerSettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level, settings.log_json)
    return settings


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    table = "table"


@app.command()
def analyze(
    paths: Optional[list[Path]] = typer.Argument(None, help="image files to analyse", exists=True, dir_okay=False),
    posts: Optional[Path] = typer.Option(
        None,
        "--posts",
        exists=True,
        dir_okay=False,
        help="a JSONL of PostV1 (image.path + text): one AnalysisResultV2 line per post, with its post_id",
    ),
    format: OutputFormat = typer.Option(OutputFormat.jsonl, "--format", help="jsonl: one JSON object per image"),
    backend: Optional[str] = typer.Option(None, help="local | triton (default: MOODWATCH_BACKEND)"),
) -> None:
    """Analyse image files, or posts (image + text) from a JSONL, directly (no broker, no store)."""
    from workers.adapters.images import ImageError, decode_image
    from workers.analyzer.backends import build_analyzer
    from workers.analyzer.worker import in_source_pixels

    if bool(paths) == bool(posts):
        raise typer.BadParameter("give image files or --posts FILE.jsonl (one of the two)")
    settings = _settings(backend=backend)
    analyzer = build_analyzer(settings)
    if posts is not None:
        from workers.cli.analyze_posts import analyze_posts

        try:
            raise typer.Exit(analyze_posts(posts, analyzer, settings))
        finally:
            analyzer.close()
    exit_code = 0
    try:
        for path in paths:
            try:
                image = decode_image(
                    path.read_bytes(),
                    max_pixels=settings.image_max_pixels,
                    formats=settings.image_formats,
                    max_side=settings.image_analysis_max_side,
                )
            except ImageError as exc:
                typer.echo(json.dumps({"path": str(path), "error": type(exc).__name__, "message": str(exc)}))
                exit_code = 1
                continue
            (analysis,) = analyzer.analyze([image.rgb])
            analysis = in_source_pixels(analysis, image)  # same view of the image as the stream worker
            record = {"path": str(path), **analysis.model_dump(mode="json")}
            if format is OutputFormat.jsonl:
                typer.echo(json.dumps(record))
            else:
                top = analysis.evidence[0].text if analysis.evidence else ""
                typer.echo(
                    f"{path}\t{analysis.polarity}\t{analysis.polarity_probs.positive:.3f}\t"
                    f"{analysis.dominant_emotion}\t{len(analysis.regions)} regions\t{top}"
                )
    finally:
        analyzer.close()
    raise typer.Exit(exit_code)


@app.command("analyzer")
def run_analyzer(
    idle_exit_s: Optional[float] = typer.Option(None, help="exit after this many idle seconds (default: run forever)"),
) -> None:
    """Run the streaming analyzer worker (consumer group on the posts topic)."""
    from workers.analyzer.wiring import run_worker

    settings = _settings()
    sys.exit(run_worker(settings, idle_exit_s=idle_exit_s))


@app.command()
def demo(
    serve: bool = typer.Option(False, "--serve", help="keep running and serve the dashboard"),
    triton: bool = typer.Option(False, "--triton", help="run the models in a local tritonserver"),
    workdir: Path = typer.Option(Path("artifacts/demo"), help="where the local stack keeps data and logs"),
) -> None:
    """Start a local broker and store, analyse sample posts end to end, print a summary."""
    from workers.devstack.demo import run_demo

    settings = _settings(backend="triton" if triton else None)
    raise typer.Exit(run_demo(settings, workdir=workdir, serve=serve, triton=triton))


@app.command()
def aggregator() -> None:
    """Run the channel-mood aggregator (faust app over post-sentiment; spike and emotion-shift alerts)."""
    from workers.aggregator.app import run_aggregator
    from workers.aggregator.settings import AggregatorSettings

    run_aggregator(AggregatorSettings())


app.command("train")(train)
app.add_typer(index_app, name="index", help="Build and inspect the emotion-sentence retrieval index.")
app.add_typer(eval_app, name="eval", help="Evaluate on benchmark data.")
app.add_typer(triton_app, name="triton", help="Triton model repository export and serving.")
app.add_typer(dlq_app, name="dlq", help="Inspect and replay the dead-letter topic.")
app.add_typer(dashboard_app, name="dashboard", help="Serve the built-in dashboard; hash-password for its logins.")
app.add_typer(reviews_app, name="reviews", help="The moderators' reviews: export them for training.")


if __name__ == "__main__":
    app()
