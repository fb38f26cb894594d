"""`make bench` / `python -m workers.devstack.bench`: throughput and latency of the ways to run the analysis.

One table, rows:
(a) backbone  the ceiling: preprocess + EfficientNet-Lite0 alone, same micro-batches, chunking and runtime
              (MOODWATCH_BACKBONE_RUNTIME: ONNX Runtime on a CPU) as (c); plus the eager torch backbone for reference
(b) today     the LocalAnalyzer with selective-search proposals (per image, OpenCV thread pool)
(c) learned   the LocalAnalyzer with learned proposals (one batched tensor program per micro-batch)
(d) worker    the real worker end to end on a local tansu + noida-db (workers/devstack/bench_worker.py):
              posts/s draining a backlog, p50/p99 produced -> stored at half that rate
(e) triton    a local tritonserver, `--clients` concurrent clients: `moodwatch_learned` (the learned path
              as one model per micro-batch), then the selective-search `moodwatch` ensemble and `moodwatch_fused`
then the ratios c/a, c/b and d/a. The older rows follow with --naive:

(naive)   the pipeline as the papers describe it, one image at a time: every encoder runs on its
            own (MIRA's image encoder for the feature map, the retrieval encoder -- CLIP in the
            paper -- for the query, EW-MTCNN's CNN for the distribution), the retrieved sentences
            are re-encoded by the text encoder, and every region candidate is cropped from the
            image and run through the CNN on its own (Yang et al.).
(b) local   the batched LocalAnalyzer (one backbone pass per image serves every stage and every
            region through RoI features; stored sentence features; batched heads).
(c) triton  the Triton backend (workers/adapters/triton_client.py) against a local tritonserver on a freshly
            exported repository, with dynamic batching: `--clients` analyzers (think: worker
            processes) send micro-batches concurrently; once through the `moodwatch` ensemble, once
            through `moodwatch_fused` (all stages in one python model) to measure what merging saves.

Output: one JSON line per configuration (posts/s, p50/p95/p99 latency of a post = the wall time
of its micro-batch, peak RSS, per-stage time shares, ...), a JSON line with the ratios b/a and c/a
from this run, then a summary table. Every configuration runs for a time budget rather than a
fixed count, so the whole run stays under ~10 minutes however busy the machine is (posts are
counted, and the machine's load average is printed with each line). With CUDA available, (b)
also runs on the GPU.

Models: EfficientNet-Lite0 + all-MiniLM-L6-v2 (offline weights from their packages) and the
shipped heads (models/weights/heads.pt); when the heads are not there, randomly initialised heads
of the real dimensions are used and the output says so (speed does not depend on the weights).
Images: scikit-image's bundled photos, resized to common post sizes (1080x1080, 1080x1350, ...).

    python -m workers.devstack.bench [--batch 16] [--clients 2] [--budget-naive 75] [--budget 50] [--skip-triton] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import numpy as np
import torch

from pipelines.analyze import (
    AnalyzerOptions,
    GlobalOutputs,
    LocalAnalyzer,
    compose_analysis,
    heads_stage,
    region_distributions,
    retrieval_stage,
)
from pipelines.onnx_backbone import backbone_runner
from pipelines.onnx_learned import learned_runner_for
from pipelines.regions import learned_top_regions, region_candidates, top_regions_as_candidates

PROJECT_ROOT = Path(__file__).resolve().parents[2]
POST_SIZES = [(1080, 1080), (1350, 1080), (675, 1200), (480, 640), (768, 1024), (1080, 1080), (1200, 900), (720, 1280)]


# -- inputs -------------------------------------------------------------------------------------------


def bench_images() -> list[np.ndarray]:
    """scikit-image's bundled photos as RGB, resized to realistic post sizes (H x W)."""
    import cv2
    from skimage import data

    photos = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.hubble_deep_field(),
        data.immunohistochemistry(),
        data.stereo_motorcycle()[0],
        data.retina(),
        data.camera(),
    ]
    out = []
    for i, photo in enumerate(photos):
        if photo.ndim == 2:
            photo = np.repeat(photo[:, :, None], 3, axis=2)
        h, w = POST_SIZES[i % len(POST_SIZES)]
        out.append(np.ascontiguousarray(cv2.resize(photo[:, :, :3], (w, h), interpolation=cv2.INTER_LINEAR)))
    return out


@dataclass
class Models:
    backbone: Any
    heads: Any
    database: Any
    text_encoder: Any
    heads_path: Path
    index_dir: Path
    image_encoder: str
    notes: list[str] = field(default_factory=list)


def load_models(tiny: bool, workdir: Path) -> Models:
    from models.encoders import load_image_backbone, load_text_encoder
    from models.moodnet import HeadsConfig, MoodHeads
    from pipelines.checkpoints import DEFAULT_HEADS, load_heads, save_heads
    from pipelines.retrieval import SentenceDatabase, default_index_dir, ensure_seed_index, load_seed_sentences

    notes = []
    if tiny:
        image_encoder, text_spec, config = (
            "tiny-random:0",
            "tiny-random:0",
            HeadsConfig(image_dim=64, text_dim=32, hidden_dim=16),
        )
    else:
        image_encoder, text_spec, config = "efficientnet-lite0", "all-MiniLM-L6-v2", HeadsConfig()
    backbone = load_image_backbone(image_encoder, "cpu")
    text_encoder = load_text_encoder(text_spec, "cpu")
    if tiny:
        index_dir = workdir / "index"
        SentenceDatabase.from_sentences(load_seed_sentences(), text_encoder).save(index_dir)
    else:
        index_dir = default_index_dir()
        ensure_seed_index(index_dir, text_encoder)
    database = SentenceDatabase.load(index_dir)
    heads_path = DEFAULT_HEADS
    if tiny or not heads_path.is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            heads = MoodHeads(config).eval()
        heads_path = save_heads(heads, workdir / "heads" / "heads.pt", {"note": "random init for the benchmark"})
        if not tiny:
            notes.append(
                f"heads: RANDOMLY INITIALISED with the real dims ({DEFAULT_HEADS} missing); speed is unaffected"
            )
    else:
        notes.append(f"heads: {heads_path}")
    heads, _ = load_heads(heads_path)
    notes.append(
        f"image encoder {backbone.name}, text encoder {text_encoder.name}, index {database.version} "
        f"({len(database)} sentences)"
    )
    return Models(backbone, heads, database, text_encoder, heads_path, index_dir, image_encoder, notes)


# -- measurement ----------------------------------------------------------------------------------------


def _rss_bytes(pid: int | str = "self") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (tritonserver + python backend stubs)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss_bytes(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except OSError:
                pass
    return total


class PeakRss:
    """Samples the RSS of this process (and optionally a server process tree) every 50 ms."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.peak_self = _rss_bytes()
        self.peak_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_self = max(self.peak_self, _rss_bytes())
            if self.server_pid:
                self.peak_server = max(self.peak_server, _tree_rss_bytes(self.server_pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class StageClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] += seconds

    def shares(self) -> dict[str, float]:
        total = sum(self.seconds.values()) or 1.0
        return {k: round(v / total, 4) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


def _load() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return -1.0


def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    if not latencies:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    arr = np.asarray(latencies) * 1000.0
    return {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 95, 99)}


def run_batches(
    analyze: Callable[[list[np.ndarray]], Any],
    images: list[np.ndarray],
    batch: int,
    budget_s: float,
    min_batches: int = 1,
) -> tuple[int, float, list[float]]:
    """Micro-batches of `batch` posts (cycling through the images) until the budget is spent.
    Returns (posts, wall seconds, per-post latencies)."""
    posts, latencies, i = 0, [], 0
    started = time.perf_counter()
    batches = 0
    while batches < min_batches or time.perf_counter() - started < budget_s:
        chunk = [images[(i + j) % len(images)] for j in range(batch)]
        i += batch
        t0 = time.perf_counter()
        analyze(chunk)
        latencies += [time.perf_counter() - t0] * batch
        posts += batch
        batches += 1
    return posts, time.perf_counter() - started, latencies


def throughput(posts: int, seconds: float, latencies: Sequence[float]) -> dict[str, Any]:
    """The figures of every row: posts, seconds, posts per second and latency percentiles."""
    return {
        "posts": posts,
        "seconds": round(seconds, 2),
        "posts_per_s": round(posts / seconds, 3),
        "latency_ms": _percentiles(latencies),
    }


def emit(record: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(record, default=str), flush=True)
    return record


# -- (a) the naive pipeline --------------------------------------------------------------------------------


class NaivePipeline:
    """One image at a time, each encoder run separately, one CNN pass per region crop, retrieved
    sentences re-encoded. Uses the same heads, index and composition as the Analyzer, so it
    differs only in *how* the features are computed (region features come from crops here)."""

    def __init__(self, models: Models, options: AnalyzerOptions, clock: StageClock) -> None:
        self.m, self.options, self.clock = models, options, clock

    @torch.inference_mode()
    def analyze_one(self, image: np.ndarray):
        m, clock, opts = self.m, self.clock, self.options
        height, width = image.shape[:2]
        with clock("proposals"):
            candidates = region_candidates(image, opts.region)
        with clock("image encoder (MIRA feature map)"):
            feat_map, _ = m.backbone(m.backbone.preprocess([image]))
        with clock("retrieval encoder (CLIP role)"):
            _, pooled_q = m.backbone(m.backbone.preprocess([image]))
            query = m.heads.embed(pooled_q)
        with clock("faiss search"):
            scores, ids = m.database.search(query.numpy(), k=opts.candidates)
            sentences = m.database.sentences_for(ids)[0]
        with clock("text encoder (re-encode sentences)"):
            read = [s.text for s in sentences[: opts.retrieval_k]]
            text_feats = torch.as_tensor(m.text_encoder.encode(read))[None]
        with clock("MIRA head"):
            polarity, _ = m.heads.polarity(text_feats, feat_map)
        with clock("distribution CNN (EW-MTCNN)"):
            _, pooled_d = m.backbone(m.backbone.preprocess([image]))
            emotions, emotions6 = m.heads.emotions(pooled_d), m.heads.emotions6(pooled_d)
        with clock("region crops through the CNN"):
            dists = []
            for x0, y0, x1, y1 in candidates.boxes:
                crop = image[int(y0) : max(int(y0) + 1, int(np.ceil(y1))), int(x0) : max(int(x0) + 1, int(np.ceil(x1)))]
                _, pooled_r = m.backbone(m.backbone.preprocess([crop]))
                dists.append(m.heads.score_regions(pooled_r))
            region_dists = torch.cat(dists) if dists else None
        with clock("compose"):
            outputs = GlobalOutputs(polarity, polarity, emotions, emotions6, scores, ids)
            return compose_analysis(outputs, 0, region_dists, candidates, sentences, width, height, opts)


# -- (b) stage shares of the batched local analyzer -----------------------------------------------------------


def profile_local(analyzer: LocalAnalyzer, images: list[np.ndarray], clock: StageClock) -> None:
    """LocalAnalyzer.analyze, step by step with timers (same stage functions, same order)."""
    opts = analyzer.options
    with torch.inference_mode():
        with clock("proposals (thread pool)"):
            candidates = list(analyzer._pool.map(lambda img: region_candidates(img, opts.region), images))
        with clock("preprocess (resize)"):
            pixels = analyzer.backbone.preprocess(list(images))
        with clock("backbone"):
            feat_map, pooled = analyzer.backbone(pixels)
        with clock("retrieval (embed + faiss)"):
            retrieval = retrieval_stage(analyzer.heads, analyzer.database, pooled, opts.candidates)
        with clock("heads (MIRA + distribution)"):
            read = retrieval.features[:, : opts.retrieval_k]
            text_feats = torch.as_tensor(read, dtype=feat_map.dtype, device=feat_map.device)
            outputs = GlobalOutputs(
                *heads_stage(analyzer.heads, feat_map, pooled, text_feats), retrieval.scores, retrieval.ids
            )
        evidence = analyzer.database.sentences_for(retrieval.ids)
        for i, image in enumerate(images):
            h, w = image.shape[:2]
            with clock("regions (RoI + scorer)"):
                dists = region_distributions(
                    analyzer.heads, analyzer.backbone, feat_map[i : i + 1], candidates[i], w, h
                )
            with clock("compose"):
                compose_analysis(outputs, i, dists, candidates[i], evidence[i], w, h, opts)


# -- (a) backbone ceiling and (c) learned proposals ----------------------------------------------------------


def profile_learned(analyzer: LocalAnalyzer, images: list[np.ndarray], clock: StageClock) -> None:
    """Stage shares of the learned path (the same calls as ``LocalAnalyzer._analyze_learned``)."""
    sizes = torch.tensor([(img.shape[1], img.shape[0]) for img in images])
    with torch.inference_mode():
        with clock("preprocess (resize)"):
            pixels = analyzer.backbone.preprocess(list(images))
        with clock("backbone"):
            feat_map, pooled = analyzer.backbone_runner(pixels)
        with clock("retrieval + heads"):
            outputs = analyzer.global_outputs(feat_map, pooled, [None] * len(images))
        with clock("proposals (head + NMS)"):
            boxes, objectness, mask = analyzer.proposer(feat_map, sizes)
        with clock("regions (RoI-align + scores + AR top-K)"):
            top = learned_top_regions(analyzer.heads, feat_map, boxes, objectness, mask, analyzer.options.regions_top_k)
        with clock("compose"):
            evidence = analyzer.database.sentences_for(outputs.retrieval_ids)
            for i, (w, h) in enumerate(sizes.tolist()):
                candidates, dists = top_regions_as_candidates(top, i, w, h)
                compose_analysis(outputs, i, dists, candidates, evidence[i], w, h, analyzer.options)


def run_new_rows(models: Models, images: list[np.ndarray], args, workdir: Path) -> dict[str, dict[str, Any]]:
    options = AnalyzerOptions(proposals="learned", backbone_chunk=args.chunk)
    runner, runtime = backbone_runner(models.backbone, args.backbone_runtime, workdir / "onnx")
    learned = LocalAnalyzer(models.backbone, models.heads, models.database, options, backbone_runner=runner)
    eager = LocalAnalyzer(models.backbone, models.heads, models.database, replace(options, regions_enabled=False))
    program = None
    if runtime == "onnxruntime":  # as the worker builds it: the whole learned path as one ONNX graph
        program, _ = learned_runner_for(
            models.backbone, models.heads, learned.proposer, models.database, options, workdir / "onnx"
        )
    whole = LocalAnalyzer(
        models.backbone, models.heads, models.database, options, proposer=learned.proposer, learned_runner=program
    )
    rows = [("a", "a-backbone-ceiling", learned.backbone_pass)]
    if runtime != "torch":  # the eager torch backbone for reference: what the runtime choice is worth
        rows.append(("a_torch", "a-backbone-torch-eager", eager.backbone_pass))
    if program is not None:
        rows.append(("c", "c-learned-one-graph", whole.analyze))
        rows.append(("c_stages", "c-learned-stages", learned.analyze))  # backbone in the runtime, the rest in torch
    else:
        rows.append(("c", "c-learned-proposals", learned.analyze))
    out = {}
    for key, name, fn in rows:
        with torch.inference_mode():
            fn(images[: args.batch])  # warm-up
        load = _load()
        with PeakRss() as rss, torch.inference_mode():
            posts, seconds, lat = run_batches(fn, images, args.batch, args.budget)
        out[key] = emit(
            {
                "config": name,
                "device": "cpu",
                "batch": args.batch,
                "chunk": args.chunk,
                **throughput(posts, seconds, lat),
                "peak_rss_mb": round(rss.peak_self / 2**20),
                "load_avg_1m": load,
                "backbone_runtime": "torch" if key == "a_torch" else runtime,
                "region_proposals": learned.versions.region_proposals,
            }
        )
        if key == ("c_stages" if program is not None else "c"):  # stage shares need the stages apart
            clock = StageClock()
            profile_learned(learned, [images[j % len(images)] for j in range(args.batch)], clock)
            out[key]["stage_share"] = clock.shares()
            emit({"config": "c-stage-shares", "stage_share": out[key]["stage_share"]})
    learned.close()
    eager.close()
    whole.close()
    return out


def run_naive(models: Models, images: list[np.ndarray], options: AnalyzerOptions, args) -> dict[str, Any]:
    clock = StageClock()
    naive = NaivePipeline(models, options, clock)
    naive.analyze_one(np.ascontiguousarray(images[3][::4, ::4]))  # warm-up on a small image, not counted
    clock.seconds.clear()
    load = _load()
    with PeakRss() as rss:
        posts, seconds, lat = run_batches(lambda b: [naive.analyze_one(im) for im in b], images, 1, args.budget_naive)
    return emit(
        {
            "config": "naive",
            "device": "cpu",
            "batch": 1,
            **throughput(posts, seconds, lat),
            "peak_rss_mb": round(rss.peak_self / 2**20),
            "stage_share": clock.shares(),
            "load_avg_1m": load,
        }
    )


# -- (e) triton ------------------------------------------------------------------------------------------------


def _server_stats(client, models: Sequence[str]) -> dict[str, dict[str, int]]:
    stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    out = {}
    for s in stats:
        if s.get("name") not in models:
            continue
        inf = s.get("inference_stats", {})
        ns = {
            k: int(inf.get(k, {}).get("ns", 0) or 0)
            for k in ("queue", "compute_input", "compute_infer", "compute_output")
        }
        out[s["name"]] = {
            **ns,
            "inference_count": int(s.get("inference_count", 0) or 0),
            "execution_count": int(s.get("execution_count", 0) or 0),
        }
    return out


def run_triton(models: Models, images: list[np.ndarray], args, workdir: Path, deadline: float) -> list[dict[str, Any]]:
    from pipelines.export import STAGE_MODELS, export_repository
    from workers.adapters.triton_client import TritonAnalyzer, TritonOptions
    from workers.devstack.triton_server import TritonServer

    records = []
    repo = workdir / "triton_repo"
    export_repository(
        models.heads_path,
        models.index_dir,
        repo,
        "cpu",
        image_encoder=models.image_encoder,
        max_batch_size=max(32, args.batch),
        models=["moodwatch", "moodwatch_fused", "moodwatch_learned"],
    )
    server = TritonServer(
        repo,
        log_dir=workdir / "triton-logs",
        model_control="explicit",
        load_models=["moodwatch_learned", "moodwatch", "moodwatch_fused"],
        ready_timeout_s=max(60.0, deadline - time.monotonic() - 60),
    )
    t0 = time.perf_counter()
    server.start()
    startup = time.perf_counter() - t0
    client = server.client()
    try:
        for model in ("moodwatch_learned", "moodwatch", "moodwatch_fused"):
            remaining = deadline - time.monotonic()
            if remaining < 20:
                records.append(
                    emit({"config": f"e-triton-{model}", "skipped": f"time budget spent ({remaining:.0f}s left)"})
                )
                continue
            budget = min(args.budget, remaining - 10)
            options = AnalyzerOptions(proposals="learned" if model == "moodwatch_learned" else "selective_search")
            analyzers = [
                TritonAnalyzer(TritonOptions(url=server.grpc_url, model=model, timeout_s=300), options)
                for _ in range(args.clients)
            ]
            try:
                analyzers[0].analyze(images[:2])  # warm the path
                watched = [*STAGE_MODELS, model] if model == "moodwatch" else [model]
                before = _server_stats(client, watched)
                clock = StageClock()
                load = _load()
                with PeakRss(server.pid) as rss:
                    posts, seconds, latencies = _concurrent_batches(analyzers, images, args.batch, budget, clock)
                after = _server_stats(client, watched)
            finally:
                for a in analyzers:
                    a.close()
            server_side = {}
            for name in watched:
                d = {k: after[name][k] - before.get(name, {}).get(k, 0) for k in after.get(name, {})}
                if not d:
                    continue
                server_side[name] = {
                    "compute_ms": round((d["compute_input"] + d["compute_infer"] + d["compute_output"]) / 1e6, 1),
                    "queue_ms": round(d["queue"] / 1e6, 1),
                    "avg_batch": round(d["inference_count"] / d["execution_count"], 2)
                    if d["execution_count"]
                    else None,
                }
            compute_total = sum(v["compute_ms"] for k, v in server_side.items() if k != "moodwatch") or 1.0
            records.append(
                emit(
                    {
                        "config": f"e-triton-{model}",
                        "device": "cpu",
                        "clients": args.clients,
                        "batch": args.batch,
                        **throughput(posts, seconds, latencies),
                        "peak_rss_mb": {
                            "client": round(rss.peak_self / 2**20),
                            "server": round(rss.peak_server / 2**20),
                        },
                        "stage_share_client": clock.shares(),
                        "server_compute_share": {
                            k: round(v["compute_ms"] / compute_total, 4)
                            for k, v in server_side.items()
                            if k != "moodwatch"
                        },
                        "server": server_side,
                        "server_startup_s": round(startup, 1),
                        "load_avg_1m": load,
                    }
                )
            )
    finally:
        client.close()
        server.stop()
    return records


def _concurrent_batches(analyzers, images, batch, budget_s, clock) -> tuple[int, float, list[float]]:
    """Each analyzer (a simulated worker) takes micro-batches from a shared stream until the budget ends."""
    stop_at = time.perf_counter() + budget_s
    counter = iter(range(10**9))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: Queue = Queue()

    def work(analyzer) -> None:
        try:
            while time.perf_counter() < stop_at:
                with lock:
                    start = next(counter) * batch
                chunk = [images[(start + j) % len(images)] for j in range(batch)]
                t0 = time.perf_counter()
                analyzer.analyze(chunk)
                with lock:
                    latencies.extend([time.perf_counter() - t0] * batch)
                    for stage, secs in analyzer.last_stage_seconds.items():
                        clock.add(stage, secs)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            errors.put(exc)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(a,), daemon=True) for a in analyzers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        raise errors.get_nowait()
    except Empty:
        pass
    return len(latencies), time.perf_counter() - started, latencies


# -- main ---------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="posts per micro-batch for (b) and (c)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent Triton clients (simulated workers) in (c)")
    parser.add_argument("--budget-naive", type=float, default=45.0, help="seconds for (a) (at least one post)")
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds for each of (b), (c) ensemble, (c) fused (at least one micro-batch)",
    )
    parser.add_argument("--total", type=float, default=540.0, help="start no configuration after this many seconds")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (a smoke test of the bench itself)")
    parser.add_argument("--naive", action="store_true", help="also run the paper's one-image-at-a-time pipeline")
    parser.add_argument("--skip-worker", action="store_true", help="skip (d), the worker end to end")
    parser.add_argument("--worker-posts", type=int, default=512, help="(d): backlog drained at the maximum rate")
    parser.add_argument("--worker-seconds", type=float, default=20.0, help="(d): seconds produced at half that rate")
    parser.add_argument(
        "--chunk", type=int, default=0, help="backbone chunk of (a), (c) and (d) (MOODWATCH_BACKBONE_CHUNK; 0 = all)"
    )
    parser.add_argument(
        "--backbone-runtime",
        choices=("auto", "torch", "onnxruntime"),
        default="auto",
        help="backbone runtime of (a), (c) and (d) (MOODWATCH_BACKBONE_RUNTIME); (a) also runs eager torch",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    deadline = time.monotonic() + args.total
    workdir = Path(tempfile.mkdtemp(prefix="moodwatch-bench-"))
    records: dict[str, dict[str, Any]] = {}
    try:
        t0 = time.perf_counter()
        models = load_models(args.tiny, workdir)
        images = bench_images()
        emit(
            {
                "config": "setup",
                "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "cuda": torch.cuda.is_available(),
                "load_avg_1m": _load(),
                "notes": models.notes,
                "images": [f"{im.shape[1]}x{im.shape[0]}" for im in images],
                "setup_s": round(time.perf_counter() - t0, 1),
            }
        )
        options = AnalyzerOptions()
        if not args.tiny:
            records.update(run_new_rows(models, images, args, workdir))
        if args.naive:
            records["naive"] = run_naive(models, images, options, args)
        if not args.skip_worker and not args.tiny:
            from workers.devstack.bench_worker import run_worker_bench

            try:
                overrides = {
                    "backbone_chunk": args.chunk,
                    "region_proposals": "learned",
                    "backbone_runtime": args.backbone_runtime,
                }
                rec = run_worker_bench(args.worker_posts, args.worker_seconds, overrides)
                records["d"] = emit(rec | {"peak_rss_mb": "-", "load_avg_1m": _load()})
            except Exception as exc:  # noqa: BLE001  (a broken local stack must not hide the other rows)
                emit({"config": "d-worker-kafka-to-es", "error": repr(exc)})

        # (b) batched local (today's path)
        local = LocalAnalyzer(models.backbone, models.heads, models.database, options)
        local.analyze(images[:2])  # warm-up
        load = _load()
        with PeakRss() as rss:
            posts, seconds, lat = run_batches(local.analyze, images, args.batch, args.budget)
        clock = StageClock()
        profile_local(local, [images[j % len(images)] for j in range(max(2, args.batch // 2))], clock)  # half a batch
        records["b"] = emit(
            {
                "config": "b-today-selective-search",
                "device": "cpu",
                "batch": args.batch,
                **throughput(posts, seconds, lat),
                "peak_rss_mb": round(rss.peak_self / 2**20),
                "stage_share": clock.shares(),
                "load_avg_1m": load,
            }
        )
        local.close()

        if torch.cuda.is_available():
            from pipelines.checkpoints import load_heads

            gpu_heads, _ = load_heads(models.heads_path, device="cuda")
            gpu = LocalAnalyzer(models.backbone.to("cuda"), gpu_heads, models.database, options)
            gpu.analyze(images[: args.batch])
            with PeakRss() as rss:
                torch.cuda.reset_peak_memory_stats()
                posts, seconds, lat = run_batches(gpu.analyze, images, args.batch, args.budget)
            records["b_gpu"] = emit(
                {
                    "config": "b-local-gpu",
                    "device": torch.cuda.get_device_name(0),
                    "batch": args.batch,
                    **throughput(posts, seconds, lat),
                    "peak_rss_mb": round(rss.peak_self / 2**20),
                    "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20),
                }
            )
            gpu.close()
            models.backbone.to("cpu")

        # (e) triton
        if not args.skip_triton:
            if deadline - time.monotonic() < 90:
                emit({"config": "e-triton", "skipped": "time budget spent"})
            else:
                for rec in run_triton(models, images, args, workdir, deadline):
                    if "posts_per_s" in rec:
                        records["e-" + rec["config"].rsplit("-", 1)[-1]] = rec

        ratios = {"config": "ratios"}
        rate = {key: rec["posts_per_s"] for key, rec in records.items()}
        for num, den in (("c", "a"), ("c", "b"), ("d", "a")):
            ratios[f"{num}/{den}"] = round(rate[num] / rate[den], 3) if num in rate and den in rate else "n/a"
        emit(ratios)
        print_table(records)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_table(records: dict[str, dict[str, Any]]) -> None:
    rows = [("config", "posts", "posts/s", "p50 ms", "p95 ms", "p99 ms", "peak RSS MB", "load", "largest stage shares")]
    for rec in records.values():
        rss = rec["peak_rss_mb"]
        rss = f"{rss['client']}+{rss['server']}" if isinstance(rss, dict) else str(rss)
        shares = rec.get("stage_share") or rec.get("server_compute_share") or {}
        top = ", ".join(f"{k} {v:.0%}" for k, v in list(shares.items())[:3])
        lat = rec["latency_ms"]
        rows.append(
            (
                rec["config"],
                str(rec["posts"]),
                f"{rec['posts_per_s']:.2f}",
                f"{lat['p50']:.0f}",
                f"{lat['p95']:.0f}",
                f"{lat['p99']:.0f}",
                rss,
                str(rec.get("load_avg_1m", "")),
                top,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    raise SystemExit(main())
