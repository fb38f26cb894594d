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
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS
from workers.dashboard.settings import DashboardSettings
from workers.common.logs import get_logger

log = get_logger("moodwatch.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
RANGES: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
# "nice" histogram intervals, seconds; the smallest giving at most MAX_BUCKETS buckets is used
INTERVALS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604800)
MAX_BUCKETS = 120
MAX_CHANNELS = 8
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
               ".webp": "image/webp", ".bmp": "image/bmp"}  # fmt: skip
GALLERY_FIELDS = [
    "post_id", "channel", "created_at", "text", "image_ref", "image_width", "image_height", "polarity",
    "negative_score", "dominant_emotion", "regions", "evidence",
]  # fmt: skip


class BadRequest(ValueError):
    pass


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)


def pick_interval(span: timedelta, max_buckets: int = MAX_BUCKETS) -> int:
    seconds = max(1.0, span.total_seconds())
    for step in INTERVALS:
        if seconds / step <= max_buckets:
            return step
    return INTERVALS[-1]


class DashboardQueries:
    """The Elasticsearch side: each method is one request (two for the time bounds)."""

    def __init__(self, es: Any, settings: DashboardSettings) -> None:
        self.es = es
        self.settings = settings
        self.results = settings.es_results_index
        self.alerts = settings.es_alerts_index

    # -- time window ---------------------------------------------------------------------------
    def _edge(self, order: str) -> datetime | None:
        resp = self.es.search(index=self.results, size=1, sort=[{"created_at": order}], source_includes=["created_at"])
        hits = resp["hits"]["hits"]
        return _parse_time(hits[0]["_source"]["created_at"]) if hits else None

    def bounds(self, range_name: str) -> tuple[datetime, datetime, int] | None:
        if range_name not in RANGES:
            raise BadRequest(f"range must be one of {', '.join(RANGES)}")
        newest = self._edge("desc")
        if newest is None:
            return None
        span = RANGES[range_name]
        oldest = None
        if span is None:
            oldest = self._edge("asc") or newest
            span = max(newest - oldest, timedelta(minutes=1))
        interval = pick_interval(span, MAX_BUCKETS - 2)  # the edges are rounded out by up to 2 buckets
        end_epoch = (int(newest.timestamp()) // interval + 1) * interval
        end = datetime.fromtimestamp(end_epoch, tz=timezone.utc)
        first = oldest if oldest is not None else end - span
        start = datetime.fromtimestamp((int(first.timestamp()) // interval) * interval, tz=timezone.utc)
        return start, end, interval

    def _time_filter(self, start: datetime, end: datetime, channels: list[str] | None = None) -> dict[str, Any]:
        filters: list[dict[str, Any]] = [{"range": {"created_at": {"gte": _iso(start), "lt": _iso(end)}}}]
        if channels:
            filters.append({"terms": {"channel": channels}})
        return {"bool": {"filter": filters}}

    def _histogram(self, start: datetime, end: datetime, interval: int, aggs: dict[str, Any]) -> dict[str, Any]:
        return {
            "date_histogram": {
                "field": "created_at",
                "fixed_interval": f"{interval}s",
                "min_doc_count": 0,
                "extended_bounds": {"min": _iso(start), "max": _iso(end - timedelta(seconds=interval))},
            },
            "aggs": aggs,
        }

    # -- the views -----------------------------------------------------------------------------
    def timeline(self, range_name: str, channels: list[str] | None = None) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "interval_s": None, "buckets": [], "channels": []}
        start, end, interval = b
        per_channel = {
            "terms": {"field": "channel", "size": MAX_CHANNELS},
            "aggs": {
                "negative": {"filter": {"term": {"polarity": "negative"}}},
                "mean_negative_score": {"avg": {"field": "negative_score"}},
            },
        }
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end, channels),
            aggs={
                "top_channels": {"terms": {"field": "channel", "size": MAX_CHANNELS}},
                "over_time": self._histogram(start, end, interval, {"channel": per_channel}),
            },
        )
        aggs = resp["aggregations"]
        top = [c["key"] for c in aggs["top_channels"]["buckets"]]
        buckets = []
        for bucket in aggs["over_time"]["buckets"]:
            row: dict[str, Any] = {"t": _iso(_parse_time(bucket["key"])), "count": bucket["doc_count"], "channels": {}}
            for cb in bucket["channel"]["buckets"]:
                n = cb["doc_count"]
                row["channels"][cb["key"]] = {
                    "count": n,
                    "negative": cb["negative"]["doc_count"],
                    "negative_share": cb["negative"]["doc_count"] / n if n else None,
                    "mean_negative_score": cb["mean_negative_score"]["value"],
                }
            buckets.append(row)
        return {
            "range": range_name, "start": _iso(start), "end": _iso(end), "interval_s": interval,
            "channels": top, "buckets": buckets,
        }  # fmt: skip

    def emotions(self, range_name: str, channel: str | None = None) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "interval_s": None, "buckets": [], "emotions": list(MIKELS_EMOTIONS)}
        start, end, interval = b
        avgs = {e: {"avg": {"field": f"emotions.{e}"}} for e in MIKELS_EMOTIONS}
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end, [channel] if channel else None),
            aggs={"over_time": self._histogram(start, end, interval, avgs)},
        )
        buckets = [
            {
                "t": _iso(_parse_time(bucket["key"])),
                "count": bucket["doc_count"],
                "mean": {e: bucket[e]["value"] for e in MIKELS_EMOTIONS},
            }
            for bucket in resp["aggregations"]["over_time"]["buckets"]
        ]
        return {
            "range": range_name, "start": _iso(start), "end": _iso(end), "interval_s": interval, "channel": channel,
            "emotions": list(MIKELS_EMOTIONS), "negative_emotions": sorted(NEGATIVE_EMOTIONS), "buckets": buckets,
        }  # fmt: skip

    def channels(self, range_name: str) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "channels": []}
        start, end, _ = b
        resp = self.es.search(
            index=self.results,
            size=0,
            query=self._time_filter(start, end),
            aggs={
                "channel": {
                    "terms": {"field": "channel", "size": 50},
                    "aggs": {
                        "negative": {"filter": {"term": {"polarity": "negative"}}},
                        "mean_negative_score": {"avg": {"field": "negative_score"}},
                        "dominant": {"terms": {"field": "dominant_emotion", "size": 1}},
                    },
                }
            },
        )
        out = []
        for cb in resp["aggregations"]["channel"]["buckets"]:
            n = cb["doc_count"]
            dom = cb["dominant"]["buckets"]
            out.append({
                "channel": cb["key"], "count": n, "negative": cb["negative"]["doc_count"],
                "negative_share": cb["negative"]["doc_count"] / n if n else None,
                "mean_negative_score": cb["mean_negative_score"]["value"],
                "dominant_emotion": dom[0]["key"] if dom else None,
            })  # fmt: skip
        return {"range": range_name, "start": _iso(start), "end": _iso(end), "channels": out}

    def alerts_list(self, range_name: str, size: int = 50) -> dict[str, Any]:
        b = self.bounds(range_name)
        query: dict[str, Any] = {"match_all": {}}
        if b is not None and RANGES[range_name] is not None:
            start, end, _ = b
            query = {"range": {"window_start": {"gte": _iso(start), "lt": _iso(end)}}}
        try:
            resp = self.es.search(index=self.alerts, size=size, query=query, sort=[{"window_start": "desc"}])
        except Exception as exc:  # the alerts index may not exist before the first alert
            if getattr(exc, "status_code", None) == 404:
                return {"range": range_name, "alerts": []}
            raise
        return {"range": range_name, "alerts": [h["_source"] for h in resp["hits"]["hits"]]}

    def gallery(self, range_name: str, channel: str | None, size: int, image_url) -> dict[str, Any]:
        b = self.bounds(range_name)
        if b is None:
            return {"range": range_name, "posts": []}
        start, end, _ = b
        query = self._time_filter(start, end, [channel] if channel else None)
        query["bool"]["filter"].append({"term": {"polarity": "negative"}})
        resp = self.es.search(
            index=self.results, size=size, query=query, sort=[{"created_at": "desc"}], source_includes=GALLERY_FIELDS
        )
        posts = []
        for hit in resp["hits"]["hits"]:
            doc = hit["_source"]
            doc["regions"] = sorted(doc.get("regions") or [], key=lambda r: -r.get("score", 0))
            doc["image_url"] = image_url(doc)
            posts.append(doc)
        return {"range": range_name, "posts": posts}

    def image_ref(self, post_id: str) -> str | None:
        try:
            resp = self.es.get(index=self.results, id=post_id, source_includes=["image_ref"])
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                return None
            raise
        return resp["_source"].get("image_ref")


def local_image_path(image_ref: str | None, root: Path | None) -> Path | None:
    """The file behind a ``file:PATH`` ref if it is an existing image file under ``root``; else None."""
    if not image_ref or root is None or not image_ref.startswith("file:"):
        return None
    try:
        path = Path(image_ref[len("file:") :]).resolve(strict=True)
        base = root.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file() or path.suffix.lower() not in IMAGE_TYPES:
        return None
    return path


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

    def do_GET(self) -> None:  # noqa: N802
        url = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        t0 = time.perf_counter()
        try:
            self._route(url.path, params)
        except BadRequest as exc:
            self._json(400, {"error": str(exc)})
        except BrokenPipeError:
            pass
        except Exception as exc:
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

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
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
