"""Backbone layouts by measurement: preprocess + EfficientNet-Lite0 per runtime, chunk size and memory format.

    python -m workers.devstack.bench_layouts [--batch 32] [--budget 8] [--device cpu]

Prints img/s per layout and the best one (what MOODWATCH_BACKBONE_RUNTIME and MOODWATCH_BACKBONE_CHUNK
should be on this machine): torch eager (contiguous and channels_last) and, on a CPU with onnxruntime
installed, the ONNX Runtime export.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from models.encoders import load_image_backbone
from pipelines.onnx_backbone import backbone_runner, onnxruntime_available
from workers.devstack.bench import bench_images


def measure(
    backbone, images, batch: int, chunk: int, channels_last: bool, budget: float, device: str, runner=None
) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=fmt)
    run = runner or backbone
    posts, started = 0, time.perf_counter()
    with torch.inference_mode():
        while posts == 0 or time.perf_counter() - started < budget:
            micro = [images[(posts + j) % len(images)] for j in range(batch)]
            for i in range(0, batch, chunk):
                run(backbone.preprocess(micro[i : i + chunk]).contiguous(memory_format=fmt))
            if device == "cuda":
                torch.cuda.synchronize()
            posts += batch
    return posts / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget", type=float, default=8.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = parser.parse_args(argv)
    backbone = load_image_backbone("efficientnet-lite0", args.device).eval()
    images = bench_images()
    results = {}
    layouts = [("torch", False, None), ("torch", True, None)]
    if args.device == "cpu" and onnxruntime_available():
        runner, _ = backbone_runner(backbone, "onnxruntime", Path(tempfile.mkdtemp(prefix="moodwatch-onnx-")))
        layouts.append(("onnxruntime", False, runner))
    for runtime, channels_last, runner in layouts:
        for chunk in args.chunks:
            measure(backbone, images, chunk, chunk, channels_last, 0.0, args.device, runner)  # warm-up
            rate = measure(backbone, images, args.batch, chunk, channels_last, args.budget, args.device, runner)
            name = f"{runtime}, chunk {chunk}, {'channels_last' if channels_last else 'contiguous'}"
            results[name] = round(rate, 1)
            print(
                json.dumps(
                    {
                        "layout": name,
                        "img_per_s": results[name],
                        "load_avg_1m": os.getloadavg()[0],
                        "threads": torch.get_num_threads(),
                    }
                ),
                flush=True,
            )
    best = max(results, key=results.get)
    print(f"best: {best} ({results[best]} img/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
