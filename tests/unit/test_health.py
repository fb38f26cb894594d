"""workers/common/health.py: real HTTP calls on 127.0.0.1 against the health/metrics server."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from workers.common.health import HealthState, serve_health, serve_health_from_settings, tcp_check

pytestmark = pytest.mark.timeout(60)


def get(server, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def get_json(server, path: str) -> tuple[int, dict]:
    status, ctype, body = get(server, path)
    assert ctype.startswith("application/json")
    return status, json.loads(body)


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def serve(registry):
    servers = []

    def _serve(state: HealthState):
        server = serve_health(state, "127.0.0.1", 0, registry=registry)
        servers.append(server)
        return server

    yield _serve
    for s in servers:
        s.shutdown()


def test_binds_free_port_and_exposes_it(serve):
    server = serve(HealthState(stale_after_s=5))
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    status, _, _ = get(server, "/nope")
    assert status == 404


def test_liveness_flips_when_ticks_stop_and_back(serve):
    state = HealthState(stale_after_s=0.4)
    server = serve(state)
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            state.tick()
            time.sleep(0.05)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        status, body = get_json(server, "/livez")
        assert status == 200 and body["live"] is True
        stop.set()  # the main loop hangs
        t.join()
        assert wait_for(lambda: get(server, "/livez")[0] == 503, timeout=3)
        status, body = get_json(server, "/livez")
        assert body["live"] is False and body["last_tick_age_s"] > 0.4
        state.tick()  # it recovers
        status, body = get_json(server, "/livez")
        assert status == 200 and body["live"] is True
    finally:
        stop.set()


def test_readiness_flips_when_a_check_fails_and_back(serve):
    state = HealthState(stale_after_s=5, cache_ttl_s=0.2)
    broker_up = threading.Event()
    broker_up.set()

    def store_check():
        if not broker_up.is_set():
            raise ConnectionError("connection refused")
        return True

    state.add_check("kafka", broker_up.is_set)
    state.add_check("elasticsearch", store_check)
    server = serve(state)

    status, body = get_json(server, "/readyz")
    assert status == 200
    assert body["ready"] is True
    assert set(body["checks"]) == {"kafka", "elasticsearch"}
    assert all(c["ok"] for c in body["checks"].values())

    broker_up.clear()
    assert wait_for(lambda: get(server, "/readyz")[0] == 503, timeout=3)
    status, body = get_json(server, "/readyz")
    assert body["ready"] is False
    assert body["checks"]["kafka"] == {**body["checks"]["kafka"], "ok": False, "error": "check returned false"}
    assert "ConnectionError: connection refused" in body["checks"]["elasticsearch"]["error"]
    # liveness is independent of dependencies: the pod must not be restarted for a broker outage
    assert get(server, "/livez")[0] == 200

    broker_up.set()
    assert wait_for(lambda: get(server, "/readyz")[0] == 200, timeout=3)


def test_no_checks_means_ready(serve):
    server = serve(HealthState(stale_after_s=5))
    status, body = get_json(server, "/readyz")
    assert status == 200 and body == {"ready": True, "checks": {}}


def test_hanging_check_times_out_and_does_not_pile_up(serve):
    state = HealthState(stale_after_s=5, check_timeout_s=0.3, cache_ttl_s=0.0)
    release = threading.Event()
    calls = []

    def hanging():
        calls.append(1)
        release.wait(30)
        return True

    state.add_check("triton", hanging)
    state.add_check("fast", lambda: True)
    server = serve(state)
    try:
        t0 = time.monotonic()
        status, body = get_json(server, "/readyz")
        elapsed = time.monotonic() - t0
        assert status == 503
        assert elapsed < 2.0
        assert body["checks"]["triton"]["ok"] is False
        assert "timed out" in body["checks"]["triton"]["error"]
        assert body["checks"]["fast"]["ok"] is True
        # repeated probes while it still hangs: answered quickly, the check is not started again
        for _ in range(3):
            t0 = time.monotonic()
            assert get(server, "/readyz")[0] == 503
            assert time.monotonic() - t0 < 1.0
        assert len(calls) == 1
    finally:
        release.set()
    # once the dependency answers, readiness recovers
    assert wait_for(lambda: get(server, "/readyz")[0] == 200, timeout=3)


def test_readiness_is_cached(serve):
    state = HealthState(stale_after_s=5, cache_ttl_s=30)
    calls = []
    state.add_check("kafka", lambda: calls.append(1) or True)
    server = serve(state)

    def probe():
        assert get(server, "/readyz")[0] == 200

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(5):
        probe()
    assert len(calls) == 1


def test_draining_makes_not_ready(serve):
    state = HealthState(stale_after_s=5)
    state.add_check("kafka", lambda: True)
    server = serve(state)
    assert get(server, "/readyz")[0] == 200
    state.set_draining(True)
    status, body = get_json(server, "/readyz")
    assert status == 503 and body["ready"] is False and "draining" in body["checks"]


def test_metrics_contains_registered_counter(serve, registry):
    c = Counter("moodwatch_posts_consumed", "Posts read from Kafka", registry=registry)
    c.inc(3)
    server = serve(HealthState(stale_after_s=5))
    status, ctype, body = get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    text = body.decode()
    assert "# TYPE moodwatch_posts_consumed_total counter" in text
    assert "moodwatch_posts_consumed_total 3.0" in text
    # OpenMetrics on request
    status, ctype, body = get(server, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


def test_default_registry_used_when_none_given():
    from prometheus_client import REGISTRY

    server = serve_health(HealthState(stale_after_s=5), "127.0.0.1", 0)
    try:
        status, _, body = get(server, "/metrics")
        assert status == 200
        # the default registry carries the process/python collectors
        assert b"python_info" in body
        assert server.registry is REGISTRY
    finally:
        server.shutdown()


def test_shutdown_releases_port():
    server = serve_health(HealthState(stale_after_s=5), "127.0.0.1", 0, registry=CollectorRegistry())
    port = server.port
    server.shutdown()
    server.shutdown()  # idempotent
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_from_settings_port_zero_is_off():
    class S:
        metrics_host = "127.0.0.1"
        metrics_port = 0

    assert serve_health_from_settings(HealthState(), S()) is None


def test_tcp_check_flips_when_the_listener_goes_away_and_back(serve):
    """A dependency (broker/store) port going away and coming back flips /readyz."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    state = HealthState(stale_after_s=5, cache_ttl_s=0.0, check_timeout_s=2)
    state.add_check("kafka", tcp_check(f"127.0.0.1:1,127.0.0.1:{port}", timeout_s=0.5))
    server = serve(state)
    assert get(server, "/readyz")[0] == 200

    listener.close()
    status, body = get_json(server, "/readyz")
    assert status == 503
    assert "ConnectionError" in body["checks"]["kafka"]["error"]

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    try:
        assert get(server, "/readyz")[0] == 200
    finally:
        listener.close()


def test_tcp_check_parses_urls():
    with pytest.raises(ValueError):
        tcp_check("")
    with pytest.raises(ValueError):
        tcp_check("no-port")
    tcp_check("http://127.0.0.1:9200")  # scheme form accepted
    tcp_check("https://es.example")  # default port
