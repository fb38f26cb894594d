"""The dashboard's server: the FastAPI app (app.py) on uvicorn, with its connection limits.

``moodwatch dashboard`` -> ``serve_dashboard(settings)``. The page (``workers/dashboard/static/``) is
plain HTML + vanilla JS drawing SVG, no CDN. One asyncio loop serves every connection (no thread
per connection); idle keep-alive connections close after dashboard_keep_alive_s, a connection that
does not deliver a request head within dashboard_header_timeout_s is closed, and connections beyond
dashboard_max_connections are closed at once (http_guards.py). Requests whose Host is not in
dashboard_allowed_hosts get 400 (DNS rebinding).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry

from workers.adapters.review_store import ReviewStore
from workers.common.logs import get_logger
from workers.dashboard.app import create_app
from workers.dashboard.http_guards import DashboardMetrics, bounded_h11_protocol
from workers.dashboard.settings import DashboardSettings

log = get_logger("moodwatch.dashboard")


class _Server(uvicorn.Server):
    """uvicorn's server that says when it is listening (an Event instead of polling `started`)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def secret_key_of(settings: DashboardSettings) -> str:
    if settings.dashboard_secret_key is not None:
        key = settings.dashboard_secret_key.get_secret_value()
        if len(key) < 32:
            raise ValueError("MOODWATCH_DASHBOARD_SECRET_KEY must be at least 32 characters")
        return key
    log.warning("dashboard_ephemeral_secret_key", hint="set MOODWATCH_DASHBOARD_SECRET_KEY: sessions end on restart")
    return secrets.token_urlsafe(48)


class DashboardServer:
    def __init__(self, settings: DashboardSettings, es: Any, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = DashboardMetrics.create(self.registry)
        self.app = create_app(settings, es, self.metrics, secret_key_of(settings))
        self.store: ReviewStore = self.app.state.store
        family = socket.AF_INET6 if ":" in settings.dashboard_host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((settings.dashboard_host, settings.dashboard_port))
        self.socket.listen(1024)
        self.socket.setblocking(False)
        config = uvicorn.Config(
            self.app,
            http=bounded_h11_protocol(settings.dashboard_header_timeout_s, settings.dashboard_max_connections,
                                      self.metrics),
            timeout_keep_alive=settings.dashboard_keep_alive_s,
            limit_concurrency=settings.dashboard_max_connections,
            proxy_headers=False,  # the peer address is what the auth-proxy check trusts
            server_header=False,
            lifespan="off",
            log_config=None,
            access_log=False,
            ws="none",
        )  # fmt: skip
        self.server = _Server(config)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.settings.dashboard_host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> DashboardServer:
        """Serve from a daemon thread; returns once the server listens."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="dashboard",
                                        daemon=True)  # fmt: skip
        self._thread.start()
        if not self.server.listening.wait(30):
            raise RuntimeError("dashboard did not start within 30 s")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until SIGINT / SIGTERM (uvicorn installs the handlers)."""
        self.server.run(sockets=[self.socket])

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()


def serve_dashboard(
    settings: DashboardSettings | None = None, *, es: Any | None = None, block: bool = True
) -> DashboardServer:
    """Serve the dashboard on settings.dashboard_host:dashboard_port.

    ``block=True`` (the CLI) also serves /metrics, /livez, /readyz on settings.metrics_port (unless
    0) and runs until Ctrl-C / SIGTERM, then returns the stopped server. ``block=False`` returns a
    running server (daemon thread) whose ``.url`` / ``.stop()`` you use.
    """
    settings = settings or DashboardSettings()
    if es is None:
        from workers.adapters.elastic import make_es_client

        es = make_es_client(settings)
    server = DashboardServer(settings, es)
    try:
        server.store.install()  # the dashboard writes reviews and thresholds: their indices must exist
    except Exception as exc:  # noqa: BLE001 - a store that is down now may be up later; writes will say so
        log.warning("dashboard_review_indices_not_installed", error=f"{type(exc).__name__}: {exc}"[:300])
    log.info("dashboard_listening", url=server.url, results_index=settings.es_results_index,
             allowed_hosts=settings.allowed_hosts)  # fmt: skip
    if not block:
        return server.start()

    from workers.adapters.elastic import ping
    from workers.common.health import HealthState, serve_health_from_settings

    health = HealthState(stale_after_s=120)
    health.add_check("elasticsearch", lambda: ping(es))
    health_server = serve_health_from_settings(health, settings, server.registry)
    ticker = threading.Event()

    def _tick() -> None:  # the page server's loop is its liveness
        while not ticker.wait(5):
            if server.server.started and not server.server.should_exit:
                health.tick()

    threading.Thread(target=_tick, name="dashboard-heartbeat", daemon=True).start()
    try:
        server.serve_forever()
    finally:
        ticker.set()
        server.socket.close()
        if health_server is not None:
            health_server.shutdown()
    return server


def wait_until_up(url: str, timeout_s: float = 10.0) -> bool:
    """Poll ``url + /healthz`` (loopback helper for the CLI demo and tests)."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with opener.open(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False
