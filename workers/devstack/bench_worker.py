"""Row (d) of `make bench`: the real worker end to end, Kafka -> analysis -> Elasticsearch, on a local stack.

Two phases on a fresh tansu + noida-db: a backlog of ``--posts`` drained as fast as the worker can
(posts/s = posts / drain time), then posts produced at half that rate for ``--seconds``, with the time
from produced to stored (the worker's ``process`` returns after the bulk write and the offset commit) per
post: p50 / p99.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from workers.analyzer.settings import AnalyzerSettings
from workers.analyzer.wiring import build_worker
from workers.devstack.sample_posts import sample_posts
from workers.devstack.servers import LocalStack


def _posts(prefix: str, count: int, image_dir: Path) -> list[tuple[str, bytes]]:
    out = []
    for post_id, value in sample_posts(count, image_dir=image_dir):
        new_id = post_id.replace("demo-", f"{prefix}-")
        out.append((new_id, value.replace(f'"{post_id}"'.encode(), f'"{new_id}"'.encode())))
    return out


def _drain(worker, expected: int, produced_at: dict[str, float] | None, timeout_s: float) -> tuple[int, list[float]]:
    done, latencies, deadline = 0, [], time.monotonic() + timeout_s
    while done < expected and time.monotonic() < deadline:
        records = worker.poll_batch()
        if not records:
            continue
        report = worker.process(records)
        stored = time.monotonic()
        done += report.processed + report.dead_lettered
        if produced_at is not None:
            for rec in records:
                key = rec.key.decode() if isinstance(rec.key, bytes) else str(rec.key)
                if key in produced_at:
                    latencies.append(stored - produced_at[key])
    return done, latencies


def run_worker_bench(
    posts: int = 256, seconds: float = 20.0, overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    from workers.adapters.kafka_io import make_producer

    workdir = Path(tempfile.mkdtemp(prefix="moodwatch-bench-worker-"))
    stack = LocalStack.from_dir(workdir)
    stack.start()
    try:
        settings: AnalyzerSettings = stack.settings(
            **(
                {
                    "metrics_port": 0,
                    "consumer_group": f"bench-{int(time.time())}",
                    "image_local_root": workdir / "images",
                }
                | (overrides or {})
            )
        )
        stack.tansu.create_topics([settings.posts_topic, settings.results_topic, settings.dlq_topic], partitions=2)
        worker = build_worker(settings, create_topics=False)
        producer = make_producer(settings)
        backlog = _posts("max", posts, workdir / "images")
        for key, value in backlog:
            producer.send(settings.posts_topic, key=key.encode(), value=value)
        producer.flush()
        worker.subscribe()
        # group join + first batch (model warm-up) not counted: the first polls may return nothing while
        # the group assigns partitions, so wait for a batch that was actually processed
        first, warm_deadline = 0, time.monotonic() + 120.0
        while first == 0 and time.monotonic() < warm_deadline:
            warm = worker.poll_batch()
            if warm:
                report = worker.process(warm)
                first = report.processed + report.dead_lettered
        t0 = time.monotonic()
        done, _ = _drain(worker, posts - first, None, 300.0)
        max_rate = done / (time.monotonic() - t0)

        rate = max_rate / 2
        paced = _posts("half", int(rate * seconds) + 1, workdir / "images")
        produced_at: dict[str, float] = {}

        def produce() -> None:
            start = time.monotonic()
            for i, (key, value) in enumerate(paced):
                time.sleep(max(0.0, start + i / rate - time.monotonic()))
                produced_at[key] = time.monotonic()
                producer.send(settings.posts_topic, key=key.encode(), value=value)
                producer.flush()

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        _, latencies = _drain(worker, len(paced), produced_at, seconds + 120.0)
        thread.join(timeout=5)
        worker.close()
        producer.close()
        ms = np.asarray(latencies) * 1000.0
        return {
            "config": "d-worker-kafka-to-es",
            "posts": done,
            "posts_per_s": round(max_rate, 3),
            "half_rate_posts_per_s": round(rate, 2),
            "half_rate_posts": len(latencies),
            "latency_ms": {
                "p50": round(float(np.percentile(ms, 50)), 1) if len(ms) else float("nan"),
                "p95": round(float(np.percentile(ms, 95)), 1) if len(ms) else float("nan"),
                "p99": round(float(np.percentile(ms, 99)), 1) if len(ms) else float("nan"),
            },
            "region_proposals": settings.region_proposals,
            "batch_max_posts": settings.batch_max_posts,
        }
    finally:
        stack.stop()
