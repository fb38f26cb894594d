"""The built-in dashboard: a small stdlib HTTP server with a static page and JSON endpoints over ES.

``moodwatch dashboard`` -> ``serve_dashboard(settings)``. No web framework, no CDN: the page
(``workers/dashboard/static/``) is plain HTML + vanilla JS drawing SVG.

Endpoints (GET; ``range`` = 15m | 1h | 6h | 24h | 7d | 30d | all, relative to the NEWEST post in
the index, which for a live system is now and for replayed data is the end of the replay):

``/api/timeline?range=&channels=a,b``  negative share per channel over time: ``date_histogram``
    (created_at) -> ``terms`` (channel) -> ``filter`` (polarity negative) + ``avg`` (negative_score)
``/api/emotions?range=&channel=``      mean emotion distribution over time: ``date_histogram`` ->
    8 x ``avg`` (emotions.*), the stacked area
``/api/channels?range=``               per-channel totals: ``terms`` -> ``filter`` + ``avg``
``/api/alerts?range=&size=``           latest alerts (alerts index, newest window first)
``/api/gallery?range=&channel=&size=`` recent negative posts with regions, evidence and an image URL
                                       when the image is a local file under the allowed root
``/image/<post_id>``                   that image (only ``file:`` refs under the allowed root)
``/api/config``, ``/healthz``

Every aggregation runs in Elasticsearch; the server only reshapes the buckets.
"""

from __future__ import annotations

import json
import mimetypes
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS
from workers.common.logs import get_logger
from workers.dashboard.queries import IMAGE_TYPES, RANGES, BadRequest, DashboardQueries, local_image_path
from workers.dashboard.settings import DashboardSettings

log = get_logger("moodwatch.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
# --- HTTP ---------------------------------------------------------------------------------------


@dataclass
class DashboardMetrics:
    requests: Counter
    duration: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "DashboardMetrics":
        return cls(
            requests=Counter(
                "moodwatch_dashboard_requests", "Dashboard HTTP requests by endpoint and status code",
                ["endpoint", "code"], registry=registry,
            ),
            duration=Histogram(
                "moodwatch_dashboard_request_seconds", "Dashboard request time (Elasticsearch queries included)",
                ["endpoint"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry,
            ),
        )  # fmt: skip


def _endpoint(path: str) -> str:
    if path.startswith("/api/"):
        return path if path[5:] in ("timeline", "emotions", "channels", "alerts", "gallery", "config") else "/api/other"
    if path.startswith("/image/"):
        return "/image"
    if path.startswith("/static/"):
        return "/static"
    return path if path in ("/", "/index.html", "/healthz") else "other"


class _Handler(BaseHTTPRequestHandler):
    server: "DashboardServer"
    server_version = "moodwatch-dashboard/1"
    _status = 0

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        t0 = time.perf_counter()
        try:
            self._route(url.path, params)
        except BadRequest as exc:
            self._json(400, {"error": str(exc)})
        except BrokenPipeError:
            pass
        except Exception as exc:  # noqa: BLE001 - a failed store query answers 502; the server lives on
            log.warning("dashboard_error", path=url.path, error=f"{type(exc).__name__}: {str(exc)[:300]}")
            self._json(502, {"error": f"store query failed: {type(exc).__name__}"})
        endpoint = _endpoint(url.path)
        self.server.metrics.requests.labels(endpoint=endpoint, code=str(self._status)).inc()
        self.server.metrics.duration.labels(endpoint=endpoint).observe(time.perf_counter() - t0)

    def _route(self, path: str, params: dict[str, str]) -> None:
        srv = self.server
        q = srv.queries
        rng = params.get("range", srv.settings.dashboard_default_range)
        if path in ("/", "/index.html"):
            return self._static("index.html")
        if path.startswith("/static/"):
            return self._static(path[len("/static/") :])
        if path == "/healthz":
            return self._json(200, {"ok": True})
        if path == "/api/config":
            return self._json(200, {
                "default_range": srv.settings.dashboard_default_range, "ranges": list(RANGES),
                "refresh_s": srv.settings.dashboard_refresh_s, "emotions": list(MIKELS_EMOTIONS),
                "negative_emotions": sorted(NEGATIVE_EMOTIONS),
            })  # fmt: skip
        if path == "/api/timeline":
            channels = [c for c in params.get("channels", "").split(",") if c] or None
            return self._json(200, q.timeline(rng, channels))
        if path == "/api/emotions":
            return self._json(200, q.emotions(rng, params.get("channel") or None))
        if path == "/api/channels":
            return self._json(200, q.channels(rng))
        if path == "/api/alerts":
            return self._json(200, q.alerts_list(rng, _int(params.get("size"), 50, 1, 500)))
        if path == "/api/gallery":
            size = _int(params.get("size"), 12, 1, 100)
            return self._json(200, q.gallery(rng, params.get("channel") or None, size, srv.image_url))
        if path.startswith("/image/"):
            return self._image(unquote(path[len("/image/") :]))
        self._json(404, {"error": "not found"})

    def _static(self, name: str) -> None:
        target = (STATIC_DIR / name).resolve()
        if not target.is_relative_to(STATIC_DIR) or not target.is_file():
            return self._json(404, {"error": "not found"})
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self._send(200, ctype, target.read_bytes(), cache="no-cache")

    def _image(self, post_id: str) -> None:
        path = local_image_path(self.server.queries.image_ref(post_id), self.server.image_root)
        if path is None:
            return self._json(404, {"error": "no local image for this post"})
        if path.stat().st_size > self.server.settings.image_max_bytes:
            return self._json(413, {"error": "image too large"})
        self._send(200, IMAGE_TYPES[path.suffix.lower()], path.read_bytes(), cache="max-age=300")

    def _json(self, status: int, body: Any) -> None:
        self._send(status, "application/json", json.dumps(body, default=str).encode(), cache="no-store")

    def _send(self, status: int, ctype: str, data: bytes, cache: str) -> None:
        self._status = status
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'",
        )
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dashboard_request", line=format % args)


def _int(value: str | None, default: int, lo: int, hi: int) -> int:
    try:
        return min(hi, max(lo, int(value))) if value is not None else default
    except ValueError as exc:
        raise BadRequest(f"not an integer: {value!r}") from exc


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: DashboardSettings, es: Any, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = DashboardMetrics.create(self.registry)
        self.queries = DashboardQueries(es, settings)
        self.image_root = settings.image_root_for_dashboard
        self._thread: threading.Thread | None = None
        super().__init__((settings.dashboard_host, settings.dashboard_port), _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    def image_url(self, doc: dict[str, Any]) -> str | None:
        if local_image_path(doc.get("image_ref"), self.image_root) is None:
            return None
        return f"/image/{doc['post_id']}"

    def start(self) -> "DashboardServer":
        self._thread = threading.Thread(target=self.serve_forever, name="dashboard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def serve_dashboard(
    settings: DashboardSettings | None = None, *, es: Any | None = None, block: bool = True
) -> DashboardServer:
    """Serve the dashboard on settings.dashboard_host:dashboard_port.

    ``block=True`` (the CLI) also serves /metrics, /livez, /readyz on settings.metrics_port (unless
    0) and runs until Ctrl-C / SIGTERM, then returns the stopped server. ``block=False`` returns a
    running page server (daemon thread) whose ``.url`` / ``.stop()`` you use.
    """
    settings = settings or DashboardSettings()
    if es is None:
        from workers.adapters.elastic import make_es_client

        es = make_es_client(settings)
    server = DashboardServer(settings, es)
    log.info("dashboard_listening", url=server.url, results_index=settings.es_results_index,
             image_root=str(server.image_root) if server.image_root else None)  # fmt: skip
    if not block:
        return server.start()
    import signal

    from workers.adapters.elastic import ping
    from workers.common.health import HealthState, serve_health_from_settings

    health = HealthState(stale_after_s=120)
    health.add_check("elasticsearch", lambda: ping(es))
    health_server = serve_health_from_settings(health, settings, server.registry)
    ticker = threading.Event()

    def _tick() -> None:  # the page server's threads are its liveness
        while not ticker.wait(5):
            health.tick()

    threading.Thread(target=_tick, name="dashboard-heartbeat", daemon=True).start()

    def _term(signum, frame):  # SIGTERM -> same clean exit as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term) if threading.current_thread() is threading.main_thread() else None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ticker.set()
        server.server_close()
        if health_server is not None:
            health_server.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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
