"""Backpressure: bursts produced far faster than the worker analyses; memory stays bounded.

The worker runs first (warmed up on a few posts); then a burst of N posts (each ~16 KB: a noise PNG
with a padding chunk, so a worker that buffered its backlog would show it in RSS) is produced at
broker speed (~thousands/s against ~250/s analysed). The true lag (produced - committed, from the
broker) grows to about N and drains to 0; the worker's RSS (VmRSS / VmHWM from /proc) is sampled
throughout. The burst is repeated 4x larger: the peak RSS must not grow with the backlog (the
kafka-python fetch buffer is bounded by max_partition_fetch_bytes / fetch_max_bytes, a batch by
batch_max_posts; nothing in the worker queues more).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.reliability.conftest import SEED
from tests.reliability.verify import all_committed, build_stream, produce, scrape_metric, verify, wait_until


def padded_png_b64(size: int = 16, pad: int = 12_000, seed: int = 0) -> str:
    """A small noise PNG carrying a `pad`-byte tEXt chunk: a ~16 KB post that gzip shrinks ~10x on the
    wire (so the test's pure-Python producer is fast) and that the worker holds in full once fetched."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    png = buf.getvalue()
    data = b"padding\0" + b"0" * pad
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data) & 0xFFFFFFFF)
    iend = png.rindex(b"IEND") - 4
    return base64.b64encode(png[:iend] + chunk + png[iend:]).decode()


def gauge_sum(settings) -> float | None:
    values = scrape_metric(f"http://127.0.0.1:{settings.metrics_port}", "moodwatch_consumer_lag")
    return sum(values.values()) if values else None


def burst(settings, worker, records, ends_so_far: dict[int, int], label: str) -> dict:
    """Produce `records` at full speed while the worker runs; sample until all is committed."""
    hwm_before = worker.sample_memory().get("VmHWM", 0)
    t0 = time.monotonic()
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, records, compression="gzip")
    produce_s = time.monotonic() - t0
    ends = {p: max(ends_so_far.get(p, 0), e) for p, e in {**ends_so_far, **ends}.items()}
    total = sum(ends.values())
    samples: list[tuple[float, int, float | None, int]] = []

    def tick() -> None:
        from tests.reliability.verify import committed_offsets

        committed = sum(
            committed_offsets(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic).values()
        )
        mem = worker.sample_memory()
        samples.append((time.monotonic() - t0, total - committed, gauge_sum(settings), mem.get("VmRSS", 0)))

    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=900,
        interval=0.5,
        what=f"{label} drained",
        while_alive=worker,
        on_tick=tick,
    )
    drain_s = time.monotonic() - t0
    tick()  # a sample taken after the drain (the last on_tick ran just before the final check)
    mem = worker.sample_memory()
    lags = [s[1] for s in samples]
    gauges = [s[2] for s in samples if s[2] is not None]
    return {
        "backlog_posts": len(records),
        "backlog_mb": round(sum(len(v) for _, v in records) / 2**20, 1),
        "produce_rate_per_s": round(len(records) / max(produce_s, 1e-3)),
        "drain_s": round(drain_s, 1),
        "analyse_rate_per_s": round(len(records) / max(drain_s, 1e-3)),
        "true_lag_max": max(lags, default=0),
        "true_lag_end": lags[-1] if lags else None,
        "gauge_max": max(gauges, default=None),
        "rss_max_mb": round(max((s[3] for s in samples), default=0) / 1024, 1),
        "hwm_before_mb": round(hwm_before / 1024, 1),
        "hwm_after_mb": round(mem.get("VmHWM", 0) / 1024, 1),
        "lag_timeline": [(round(t), lag, g) for t, lag, g, _ in samples[:: max(1, len(samples) // 12)]],
        "_ends": ends,
    }


def run_backpressure(sizes: list[int], *, local_stack, make_settings, worker_env, figures) -> dict:
    settings = make_settings(local_stack)
    image = padded_png_b64(16, 12_000, SEED)
    worker = worker_env(settings).start()
    warm = build_stream(200, seed=SEED, prefix="warm", image_b64=image)
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, warm.records)
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=240,
        what="warm-up",
        while_alive=worker,
    )
    baseline = worker.sample_memory()
    phases = []
    streams = [warm]
    for i, n in enumerate(sizes):
        stream = build_stream(n, seed=SEED + i, prefix=f"b{i}", image_b64=image)
        streams.append(stream)
        phase = burst(settings, worker, stream.records, ends, f"burst {n}")
        ends = phase.pop("_ends")
        phases.append(phase)
    # The lag gauge once drained: after > 5 s idle (the gauge's refresh interval) a burst of 100 is
    # analysed in 2 batches well within 5 s; a gauge refreshed only after batches would keep the value
    # from the first one; refreshed while idle too, it reads 0 once they are done.
    time.sleep(6.0)
    trickle = build_stream(100, seed=SEED, prefix="trickle", image_b64=image)
    streams.append(trickle)
    # one record per producer batch: tansu's end offsets are then exact, so a stale gauge cannot be
    # masked by its "start of the last batch + 1" under-reporting; the worker is stopped (SIGSTOP, < 1 s,
    # well inside its 6 s session) while they are produced, so its first batch sees all 100
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        more, _ = produce(settings.kafka_bootstrap, settings.posts_topic, trickle.records, batch_size=1)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    ends = {p: max(ends.get(p, 0), e) for p, e in {**ends, **more}.items()}
    trickle_gauge: list = []
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=120,
        interval=0.1,
        what="trickle drained",
        while_alive=worker,
        on_tick=lambda: trickle_gauge.append(gauge_sum(settings)),
    )
    time.sleep(6.0)
    gauge_idle = gauge_sum(settings)
    assert worker.stop() == 0, worker.log_tail(60)
    from tests.reliability.verify import Stream

    everything = Stream([r for s in streams for r in s.records], set().union(*(s.accepted for s in streams)), {})
    verdict = verify(settings, everything)
    figures.update(verdict.figures())
    figures.update(
        {
            "baseline_rss_mb": round(baseline.get("VmRSS", 0) / 1024, 1),
            "baseline_hwm_mb": round(baseline.get("VmHWM", 0) / 1024, 1),
            "phases": phases,
            "peak_rss_mb": round(worker.peak_rss_kb / 1024, 1),
            "gauge_after_drained_100_burst_and_6s_idle": gauge_idle,
            "gauge_while_100_burst_drained": trickle_gauge,
        }
    )
    assert verdict.ok, verdict.explain()
    for phase in phases:
        assert phase["true_lag_max"] >= 0.5 * phase["backlog_posts"], f"the lag should have built up: {phase}"
        assert phase["true_lag_end"] == 0
    return {"phases": phases, "baseline": baseline, "gauge_idle": gauge_idle}


@pytest.mark.timeout(420)
def test_burst_backlog_drains_with_bounded_memory(local_stack, make_settings, worker_env, figures):
    out = run_backpressure(
        [1000, 4000], local_stack=local_stack, make_settings=make_settings, worker_env=worker_env, figures=figures
    )
    small, large = out["phases"]
    growth = large["hwm_after_mb"] - small["hwm_after_mb"]
    figures["peak_growth_small_to_4x_backlog_mb"] = round(growth, 1)
    # the lag gauge once drained (regression: it used to keep its last mid-drain value forever, and the
    # MoodwatchAnalyzerStalled rule then fired on an idle, healthy worker)
    assert out["gauge_idle"] == 0, f"moodwatch_consumer_lag should read 0 once drained: {out['gauge_idle']}"
    # 4x the backlog (+50 MB more posts waiting) must not move the peak (a worker holding its backlog
    # would grow by more than the raw bytes); allow 40 MB for allocator noise
    assert growth < 40, f"peak RSS grew {growth:.1f} MB with a 4x larger backlog: {out['phases']}"
    assert large["hwm_after_mb"] - out["baseline"]["VmHWM"] / 1024 < 120


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_soak_backlog_2k_vs_10k_vs_30k(local_stack, make_settings, worker_env, figures):
    out = run_backpressure(
        [2000, 10000, 30000],
        local_stack=local_stack,
        make_settings=make_settings,
        worker_env=worker_env,
        figures=figures,
    )
    first, _, last = out["phases"]
    growth = last["hwm_after_mb"] - first["hwm_after_mb"]
    figures["peak_growth_2k_to_30k_backlog_mb"] = round(growth, 1)
    assert growth < 40, f"peak RSS grew {growth:.1f} MB from a 2k to a 30k backlog: {out['phases']}"
