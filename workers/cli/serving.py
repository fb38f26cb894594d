"""`moodwatch triton ...`: export the model repository, serve it locally, check a server.

    moodwatch triton export --repo artifacts/triton_repo [--kind gpu] [--heads PATH] [--index DIR] [--proposer PATH]
    moodwatch triton export --repo artifacts/triton_repo --model moodwatch    # the ensemble, selective search in the worker
    moodwatch triton serve --repo artifacts/triton_repo [--grpc-port 8001]    # foreground, Ctrl-C stops
    moodwatch triton status [--url 127.0.0.1:8001]

Defaults come from the MOODWATCH_* settings: heads_path (falling back to the shipped heads),
index_dir (default: the seed-sentence index, built on first use), image_encoder, retrieval_k,
regions_top_k, triton_url, triton_model.
"""

from __future__ import annotations

import json
import signal
import threading
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Triton model repository: export, serve locally, status.", no_args_is_help=True)


class Kind(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class ModelControl(str, Enum):
    none = "none"
    explicit = "explicit"


def _settings(**overrides):
    from workers.common.logs import configure_logging
    from workers.common.settings import AnalysisSettings

    settings = AnalysisSettings(**{k: v for k, v in overrides.items() if v is not None})
    configure_logging(settings.log_level, settings.log_json)
    return settings


@app.command("export")
def export(
    repo: Path = typer.Option(
        ..., "--repo", help="folder to write the model repository to (replaced if it holds an earlier export)"
    ),
    kind: Kind = typer.Option(
        Kind.cpu, "--kind", help="cpu: KIND_CPU instances; gpu: KIND_GPU instances, bigger batches"
    ),
    heads: Optional[Path] = typer.Option(
        None, "--heads", help="heads checkpoint (default: MOODWATCH_HEADS_PATH, else the shipped heads)"
    ),
    index: Optional[Path] = typer.Option(
        None, "--index", help="retrieval index folder (default: MOODWATCH_INDEX_DIR, else the seed index)"
    ),
    image_encoder: Optional[str] = typer.Option(
        None, "--image-encoder", help="backbone spec (default: MOODWATCH_IMAGE_ENCODER)"
    ),
    retrieval_k: Optional[int] = typer.Option(
        None, "--retrieval-k", min=1, help="sentences retrieved per image (default: MOODWATCH_RETRIEVAL_K)"
    ),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", min=1, help="default: 32 (cpu) / 64 (gpu)"),
    model: Optional[list[str]] = typer.Option(
        None,
        "--model",
        help="models to export (repeatable; default: MOODWATCH_TRITON_MODEL, moodwatch_learned: the analysis with "
        "learned region proposals as one model; moodwatch: the ensemble and its steps, selective search in the "
        "worker; moodwatch_fused: that ensemble as one model)",
    ),
    proposer: Optional[Path] = typer.Option(
        None,
        "--proposer",
        help="learned proposer checkpoint for moodwatch_learned (default: models/weights/proposals.pt); its top "
        "MOODWATCH_REGIONS_TOP_K regions are returned",
    ),
    backbone_backend: str = typer.Option(
        "python",
        "--backbone-backend",
        help="python: torch (ONNX Runtime inside on the cpu kind); onnxruntime: Triton's onnxruntime backend, "
        "TensorRT FP16 on the gpu kind (official tritonserver image, not the local pytriton wheel): `backbone` is "
        "1/model.onnx, and moodwatch_learned an ensemble of the whole analysis as one graph + a python sentence lookup",
    ),
) -> None:
    """Write a servable Triton model repository: rendered configs, weights, index."""
    from pipelines.checkpoints import DEFAULT_HEADS, CheckpointError
    from pipelines.export import ExportError, export_repository
    from pipelines.retrieval import IndexMismatchError, default_index_dir
    from workers.analyzer.backends import load_database

    settings = _settings(image_encoder=image_encoder, retrieval_k=retrieval_k)
    heads_path = heads or (settings.heads_path if settings.heads_path.exists() else DEFAULT_HEADS)
    if index is None:
        if settings.index_dir is None:
            load_database(settings)  # builds the seed index on first use
        index = settings.index_dir or default_index_dir(settings.artifacts_dir)
    try:
        result = export_repository(
            heads_path,
            index,
            repo,
            kind.value,
            image_encoder=settings.image_encoder,
            retrieval_k=settings.retrieval_k,
            max_batch_size=max_batch_size,
            models=model or [settings.triton_model],
            backbone_backend=backbone_backend,
            proposer_path=proposer,
            regions_top_k=settings.regions_top_k,
        )
    except (ExportError, CheckpointError, IndexMismatchError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps(result.to_json(), indent=2, default=str))


@app.command("serve")
def serve(
    repo: Path = typer.Option(..., "--repo", exists=True, file_okay=False, help="an exported model repository"),
    grpc_port: int = typer.Option(8001, help="0 = any free port"),
    http_port: int = typer.Option(8000, help="0 = any free port"),
    metrics_port: int = typer.Option(8002, help="0 = any free port"),
    model_control: ModelControl = typer.Option(
        ModelControl.none, help="none: load every model; explicit: only --load-model"
    ),
    load_model: Optional[list[str]] = typer.Option(None, "--load-model", help="with explicit control (repeatable)"),
    log_dir: Path = typer.Option(Path("artifacts/triton-logs"), help="server log and the python backend copy"),
) -> None:
    """Run tritonserver (from the nvidia-pytriton wheel) on REPO, bound to 127.0.0.1, until Ctrl-C."""
    from workers.devstack.servers import ProcessStartError
    from workers.devstack.triton_server import TritonNotInstalled, TritonServer

    server = TritonServer(
        repo,
        log_dir=log_dir,
        port=grpc_port or None,
        model_control=model_control.value,
        load_models=load_model or (),
        name="tritonserver",
    )
    if http_port:
        server.ports["http"] = http_port
    if metrics_port:
        server.ports["metrics"] = metrics_port
    typer.echo(f"starting tritonserver on {repo} (log {server.log_path}) ...")
    try:
        server.start()
    except (ProcessStartError, TritonNotInstalled, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}")
    typer.echo(f"export MOODWATCH_BACKEND=triton MOODWATCH_TRITON_URL={server.grpc_url}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if not server.running:
                typer.echo(f"tritonserver exited; see {server.log_path}", err=True)
                raise typer.Exit(1)
    finally:
        server.stop()


@app.command("status")
def status(
    url: Optional[str] = typer.Option(None, help="gRPC address (default: MOODWATCH_TRITON_URL)"),
    model: Optional[str] = typer.Option(None, help="default: MOODWATCH_TRITON_MODEL"),
) -> None:
    """Is the server live, is the model ready, what does it serve (exit 1 when not ready)."""
    from pipelines.analyzer_api import BackendUnavailable
    from workers.adapters.triton_client import TritonAnalyzer
    from workers.analyzer.backends import analyzer_options

    settings = _settings(triton_url=url, triton_model=model)
    # the worker's options: a model that proposes regions otherwise than MOODWATCH_REGION_PROPOSALS is not ready
    analyzer = TritonAnalyzer.from_settings(settings, analyzer_options(settings), connect=False)
    try:
        contract = analyzer.connect()
    except BackendUnavailable as exc:
        typer.echo(f"not ready: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        analyzer.close()
    typer.echo(
        json.dumps(
            {
                "url": settings.triton_url,
                "model": contract.model,
                "input_size": contract.input_size,
                "max_regions": contract.max_regions,
                "regions_top_k": contract.top_k if contract.learned else None,
                "region_proposals": contract.region_proposals if contract.learned else "selective_search (worker)",
                "retrieval_k": contract.retrieval_k,
                "max_batch_size": contract.max_batch_size,
                "versions": contract.versions.model_dump(),
            },
            indent=2,
        )
    )
