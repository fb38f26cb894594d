"""The dashboard's HTTP guards on a real uvicorn server: the Host allow-list (DNS rebinding) and the
connection limits (idle / half-open connections are closed, their number is bounded, no thread each).

Waiting is on the sockets themselves: a blocking read returns when the server closes the connection,
with a deadline as the failure condition; nothing sleeps.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid

import httpx
import pytest

from tests.support.dashboard import login, users_setting
from workers.adapters.elastic import make_es_client
from workers.dashboard.server import serve_dashboard
from workers.dashboard.settings import DashboardSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

IDLE = 400
LIMIT = 50
HEAD_TIMEOUT_S = 1.0


@pytest.fixture
def server(noida):
    tag = uuid.uuid4().hex[:8]
    settings = DashboardSettings(
        es_url=noida.url, es_results_index=f"http-r-{tag}", es_alerts_index=f"http-a-{tag}",
        es_reviews_index=f"http-rv-{tag}", es_thresholds_index=f"http-th-{tag}", dashboard_port=0, metrics_port=0,
        dashboard_users=users_setting(), dashboard_cookie_secure=False, dashboard_max_connections=LIMIT,
        dashboard_header_timeout_s=HEAD_TIMEOUT_S, dashboard_keep_alive_s=1,
        dashboard_allowed_hosts="127.0.0.1,dashboard.example.org",
    )  # fmt: skip
    es = make_es_client(settings)
    srv = serve_dashboard(settings, es=es, block=False)
    yield srv
    srv.stop()
    es.close()


def raw_request(srv, host: str, path: str = "/healthz") -> bytes:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        return b"".join(iter(lambda: sock.recv(65536), b""))


def test_a_foreign_host_header_gets_400(server):
    for host in ("evil.example", "attacker.example:8050", "127.0.0.1.nip.io", "dashboard.example.org.evil.example"):
        assert raw_request(server, host).startswith(b"HTTP/1.1 400"), host
    for host in (f"127.0.0.1:{server.port}", "dashboard.example.org"):
        assert raw_request(server, host).startswith(b"HTTP/1.1 200"), host
    # a browser tricked by DNS rebinding sends the attacker's name as Host: the data stays behind the 400
    viewer = login(server, "vera")
    resp = viewer.get("/api/gallery", headers={"Host": "rebound.evil.example"})
    assert resp.status_code == 400 and b"moodwatch" not in resp.content


def closed_within(sock: socket.socket, deadline: float) -> bool:
    """True when the server closed the connection (EOF or reset) before `deadline` (monotonic)."""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def test_idle_and_half_open_connections_are_closed_and_bounded(server):
    threads_before = threading.active_count()
    opened_at = time.monotonic()
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(IDLE)]
    try:
        for i, sock in enumerate(socks):
            if i % 2:  # half of them start a request head and never finish it (slow loris)
                sock.sendall(b"GET /api/gallery HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        # everything beyond the limit is closed at once, the rest once its head is overdue
        deadline = opened_at + HEAD_TIMEOUT_S + 5.0
        still_open = [i for i, sock in enumerate(socks) if not closed_within(sock, deadline)]
        assert still_open == [], f"{len(still_open)} of {IDLE} idle connections still open after the deadline"
        assert time.monotonic() - opened_at >= HEAD_TIMEOUT_S * 0.9, "the allowed ones were given their time"
        closed = {s.labels["reason"]: s.value for f in server.registry.collect() for s in f.samples
                  if s.name == "moodwatch_dashboard_connections_closed_total"}  # fmt: skip
        assert closed.get("over_limit", 0) >= IDLE - LIMIT and closed.get("header_timeout", 0) >= 1, closed
        assert closed["over_limit"] + closed["header_timeout"] == IDLE
        assert threading.active_count() - threads_before <= 2, "no thread per connection"
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(server.url + "/healthz", trust_env=False).status_code == 200, "still serving afterwards"


def test_an_idle_keep_alive_connection_is_closed(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert closed_within(sock, t0 + 5.0), "keep-alive connection left open"
        assert time.monotonic() - t0 >= 0.5
