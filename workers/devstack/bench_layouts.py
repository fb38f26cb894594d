"""Backbone layouts by measurement: preprocess + EfficientNet-Lite0 per chunk size and memory format.

    python -m workers.devstack.bench_layouts [--batch 32] [--budget 8] [--device cpu]

Prints img/s per layout and the best one (what MOODWATCH_BACKBONE_CHUNK should be on this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from models.encoders import load_image_backbone
from workers.devstack.bench import bench_images


def measure(backbone, images, batch: int, chunk: int, channels_last: bool, budget: float, device: str) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    backbone.to(memory_format=fmt)
    posts, started = 0, time.perf_counter()
    with torch.inference_mode():
        while posts == 0 or time.perf_counter() - started < budget:
            micro = [images[(posts + j) % len(images)] for j in range(batch)]
            for i in range(0, batch, chunk):
                backbone(backbone.preprocess(micro[i : i + chunk]).contiguous(memory_format=fmt))
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
    for channels_last in (False, True):
        for chunk in args.chunks:
            measure(backbone, images, chunk, chunk, channels_last, 0.0, args.device)  # warm-up
            rate = measure(backbone, images, args.batch, chunk, channels_last, args.budget, args.device)
            name = f"chunk {chunk}, {'channels_last' if channels_last else 'contiguous'}"
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
