"""The worker's /readyz follows its dependencies: not ready while the broker or the store is away."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from tests.support.tiny import tiny_analyzer
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.wiring import build_worker
from workers.common.health import HealthState, serve_health
from workers.devstack.servers import LocalStack, NoidaStore, Tansu


def readiness(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for(url: str, status: int, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        code, body = readiness(url)
        if code == status or time.monotonic() > deadline:
            assert code == status, body
            return body
        time.sleep(0.5)


@pytest.fixture
def own_stack(tmp_path):
    stack = LocalStack(
        tansu=Tansu(storage="memory", log_dir=tmp_path / "logs"),
        store=NoidaStore(tmp_path / "noida", log_dir=tmp_path / "logs"),
    )
    stack.start()
    yield stack
    stack.stop()


def test_readyz_flips_when_broker_or_store_goes_away_and_back(own_stack):
    settings = own_stack.settings(metrics_port=0, kafka_session_timeout_ms=6000)
    own_stack.tansu.create_topics([settings.posts_topic, settings.results_topic, settings.dlq_topic], partitions=1)
    health = HealthState(stale_after_s=30, check_timeout_s=2.0, cache_ttl_s=0)
    server = serve_health(health, "127.0.0.1", 0, registry=CollectorRegistry())
    worker = build_worker(
        settings,
        analyzer=tiny_analyzer(regions=False),
        health=health,
        create_topics=False,
        metrics=WorkerMetrics.create(CollectorRegistry()),
    )
    try:
        body = wait_for(server.url, 200)
        assert set(body["checks"]) == {"kafka", "elasticsearch", "model_backend"}

        own_stack.store.stop()
        body = wait_for(server.url, 503)
        assert body["checks"]["elasticsearch"]["ok"] is False and body["checks"]["kafka"]["ok"] is True
        own_stack.store.start()
        wait_for(server.url, 200)

        own_stack.tansu.stop()
        body = wait_for(server.url, 503)
        assert body["checks"]["kafka"]["ok"] is False
        own_stack.tansu.start()
        wait_for(server.url, 200)
    finally:
        worker.close()
        server.shutdown()
