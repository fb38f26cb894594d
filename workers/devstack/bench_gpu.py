"""`make bench-gpu`: the learned-proposal analysis on an NVIDIA GPU at micro-batches 64 and 256 (fp16).

Prints one JSON line per micro-batch (posts/s, p50/p99 of a post = the wall time of its micro-batch), for the
local CUDA path and for `moodwatch_learned` on a local tritonserver, and a table. ``--dry-run`` runs the same code on the CPU with small batches, fp32 and short budgets, to prove the
command works end to end on a machine without a GPU. Finishes in under 6 minutes (``--total``).

    python -m workers.devstack.bench_gpu [--dry-run] [--batches 64 256] [--budget 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.regions import load_proposer
from workers.devstack.bench import _percentiles, bench_images, load_models, run_batches


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, batches 4 and 8, fp32: proves the command runs")
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--budget", type=float, default=40.0, help="seconds per micro-batch size")
    parser.add_argument("--total", type=float, default=330.0, help="start no configuration after this many seconds")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run (CPU) or on a machine with an NVIDIA GPU", flush=True)
        return 2
    batches = args.batches or ([4, 8] if args.dry_run else [64, 256])
    budget = min(args.budget, 5.0) if args.dry_run else args.budget
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="moodwatch-bench-gpu-"))
    rows = []
    try:
        models = load_models(False, workdir)
        backbone, heads = models.backbone.to(device), models.heads.to(device)
        analyzer = LocalAnalyzer(
            backbone,
            heads,
            models.database,
            AnalyzerOptions(proposals="learned"),
            proposer=load_proposer(device=device),
        )
        images = bench_images()
        precision = "fp32" if device == "cpu" else "fp16"
        for batch in batches:
            if time.monotonic() - started > args.total:
                print(json.dumps({"batch": batch, "skipped": "time budget spent"}), flush=True)
                continue
            autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else contextlib.nullcontext()
            with autocast:
                analyzer.analyze(images[:1] * batch)  # warm-up (cuDNN autotune, allocator)
                if device == "cuda":
                    torch.cuda.synchronize()
                posts, seconds, lat = run_batches(analyzer.analyze, images, batch, budget)
            row = {
                "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)",
                "precision": precision,
                "batch": batch,
                "posts": posts,
                "posts_per_s": round(posts / seconds, 1),
                "latency_ms": _percentiles(lat),
                "region_proposals": analyzer.versions.region_proposals,
            }
            if device == "cuda":
                row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
            print(json.dumps(row), flush=True)
            rows.append(row)
        analyzer.close()
        if time.monotonic() - started < args.total - 60:
            rows += triton_rows(models, images, batches, budget, device, workdir, started + args.total)
        print("\nbackend  device  precision  micro-batch  posts/s  p50 ms  p99 ms")
        for r in rows:
            print(
                f"{r.get('backend', 'local'):7s}  {r['device']}  {r['precision']}  {r['batch']}  {r['posts_per_s']}  "
                f"{r['latency_ms']['p50']}  {r['latency_ms']['p99']}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def triton_rows(models, images, batches, budget, device, workdir: Path, deadline: float) -> list[dict]:
    """`moodwatch_learned` on a local tritonserver (GPU instances on a GPU), one client, the same micro-batches.
    The python-backend model runs fp32 torch on the GPU (the CPU export: ONNX Runtime)."""
    from pipelines.export import export_repository
    from workers.adapters.triton_client import TritonAnalyzer, TritonOptions
    from workers.devstack.triton_server import TritonServer

    repo = workdir / "triton_repo"
    kind = "gpu" if device == "cuda" else "cpu"
    export_repository(
        models.heads_path,
        models.index_dir,
        repo,
        kind,
        image_encoder=models.image_encoder,
        max_batch_size=max(batches),
        models=["moodwatch_learned"],
    )
    server = TritonServer(
        repo, log_dir=workdir / "triton-logs", model_control="explicit", load_models=["moodwatch_learned"]
    )
    server.start()
    rows = []
    options = TritonOptions(url=server.grpc_url, model="moodwatch_learned", timeout_s=300)
    analyzer = TritonAnalyzer(options, AnalyzerOptions(proposals="learned"))
    try:
        for batch in batches:
            if time.monotonic() > deadline - 20:
                print(json.dumps({"backend": "triton", "batch": batch, "skipped": "time budget spent"}), flush=True)
                continue
            analyzer.analyze(images[:1] * batch)  # warm-up
            posts, seconds, lat = run_batches(analyzer.analyze, images, batch, budget)
            row = {
                "backend": "triton",
                "device": f"{kind} instances" + ("" if device == "cuda" else " (dry run)"),
                "precision": "fp32",
                "batch": batch,
                "posts": posts,
                "posts_per_s": round(posts / seconds, 1),
                "latency_ms": _percentiles(lat),
                "region_proposals": analyzer.versions.region_proposals,
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        analyzer.close()
        server.stop()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
