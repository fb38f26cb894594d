"""Health and metrics endpoint for every worker process.

One small HTTP server per process (stdlib ``ThreadingHTTPServer`` in a daemon thread), bound to
``settings.metrics_host:settings.metrics_port``, serving:

``/metrics``
    Prometheus exposition of the default registry (or the registry passed in). Honours the
    ``Accept`` header (OpenMetrics when asked for).
``/livez``
    200 while the worker's main loop has called :meth:`HealthState.tick` within
    ``stale_after_s`` seconds, 503 otherwise. The loop being alive is all liveness means: a broker
    or store outage must *not* make the kubelet restart the pod (that is what readiness is for).
``/readyz``
    Runs the registered readiness checks (broker, store, model backend reachable ...). Each check
    is a callable returning a truthy value when healthy; returning falsy or raising means not
    ready. Checks run in parallel, each bounded by ``check_timeout_s``; a check still running from
    an earlier probe is waited on, never started twice, so a hanging dependency cannot pile up
    threads. The whole result is cached for ``cache_ttl_s`` so frequent probes (kubelet, load
    balancers, humans with curl) cannot overload the broker. 200 with
    ``{"ready": true, "checks": {...}}``, else 503 with the same shape.

Usage in a worker::

    state = HealthState(stale_after_s=60)
    state.add_check("kafka", lambda: consumer.bootstrap_connected())
    state.add_check("elasticsearch", lambda: es.ping())
    server = serve_health_from_settings(state, settings)   # None when metrics_port == 0
    while running:
        state.tick()
        ...
    state.set_draining(True)      # readiness 503 while shutting down
    server.shutdown()

Note: ``serve_health(..., port=0)`` binds a free port (tests); ``settings.metrics_port == 0``
means "no endpoint", which :func:`serve_health_from_settings` honours.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from workers.common.logs import get_logger

__all__ = [
    "CheckResult",
    "HealthServer",
    "HealthState",
    "serve_health",
    "serve_health_from_settings",
    "tcp_check",
]

log = get_logger("moodwatch.health")

Check = Callable[[], Any]


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    error: str | None
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "duration_ms": round(self.duration_ms, 1)}


class _CheckRunner:
    """One named check; at most one invocation of it runs at any time."""

    def __init__(self, name: str, fn: Check) -> None:
        self.name = name
        self.fn = fn
        self._lock = threading.Lock()
        self._inflight: Future | None = None
        self._started_at = 0.0

    def start(self) -> tuple[Future, float]:
        """The running invocation, or a fresh one; returns (future, start time)."""
        with self._lock:
            if self._inflight is None or self._inflight.done():
                fut: Future = Future()
                self._inflight = fut
                self._started_at = time.monotonic()
                t = threading.Thread(target=self._run, args=(fut,), name=f"readyz-{self.name}", daemon=True)
                t.start()
            return self._inflight, self._started_at

    def _run(self, fut: Future) -> None:
        try:
            value = self.fn()
        except BaseException as exc:  # noqa: BLE001 - a failing check is data, not a crash
            fut._moodwatch_done_at = time.monotonic()  # type: ignore[attr-defined]
            fut.set_exception(exc)
        else:
            fut._moodwatch_done_at = time.monotonic()  # type: ignore[attr-defined]
            fut.set_result(value)


class HealthState:
    """Liveness heartbeat plus readiness checks, shared by the worker and its health server.

    ``stale_after_s``: /livez fails when the last :meth:`tick` is older than this. Construction
    counts as a tick, so a worker gets ``stale_after_s`` to enter its loop.
    ``check_timeout_s``: per-check bound for /readyz; a check running longer counts as failed.
    ``cache_ttl_s``: how long a readiness result is reused.
    """

    def __init__(
        self,
        stale_after_s: float = 60.0,
        *,
        check_timeout_s: float = 2.0,
        cache_ttl_s: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError("stale_after_s must be > 0")
        if check_timeout_s <= 0:
            raise ValueError("check_timeout_s must be > 0")
        self.stale_after_s = float(stale_after_s)
        self.check_timeout_s = float(check_timeout_s)
        self.cache_ttl_s = max(0.0, float(cache_ttl_s))
        self._clock = clock
        self._last_tick = clock()
        self._checks: dict[str, _CheckRunner] = {}
        self._checks_lock = threading.Lock()
        self._eval_lock = threading.Lock()
        self._cached: tuple[float, bool, dict[str, CheckResult]] | None = None
        self._draining = False

    # -- liveness ---------------------------------------------------------------------------
    def tick(self) -> None:
        """Called by the worker's main loop on every iteration (cheap: one float store)."""
        self._last_tick = self._clock()

    def tick_age_s(self) -> float:
        return max(0.0, self._clock() - self._last_tick)

    def is_live(self) -> bool:
        return self.tick_age_s() <= self.stale_after_s

    # -- readiness --------------------------------------------------------------------------
    def add_check(self, name: str, fn: Check) -> None:
        """Register (or replace) a readiness check: truthy = ready; falsy or raising = not."""
        if not callable(fn):
            raise TypeError(f"check {name!r} is not callable")
        with self._checks_lock:
            self._checks[name] = _CheckRunner(name, fn)
            self._cached = None

    def remove_check(self, name: str) -> None:
        with self._checks_lock:
            self._checks.pop(name, None)
            self._cached = None

    def set_draining(self, draining: bool = True) -> None:
        """While draining (graceful shutdown), /readyz answers 503 without running checks."""
        self._draining = bool(draining)

    def readiness(self) -> tuple[bool, dict[str, CheckResult]]:
        """(ready, per-check results); cached for ``cache_ttl_s``, evaluated by one probe at a time."""
        if self._draining:
            return False, {"draining": CheckResult(False, "worker is shutting down", 0.0)}
        with self._eval_lock:
            now = self._clock()
            cached = self._cached
            if cached is not None and now - cached[0] < self.cache_ttl_s:
                return cached[1], cached[2]
            results = self._run_checks()
            ready = all(r.ok for r in results.values())
            self._cached = (self._clock(), ready, results)
            return ready, results

    def _run_checks(self) -> dict[str, CheckResult]:
        with self._checks_lock:
            runners = list(self._checks.values())
        started = [(r, *r.start()) for r in runners]
        deadline = time.monotonic() + self.check_timeout_s
        results: dict[str, CheckResult] = {}
        for runner, fut, t0 in started:
            # Bound by the probe's deadline and by the check's own start (an invocation left
            # over from an earlier probe that has already exceeded the timeout fails at once).
            remaining = min(deadline, t0 + self.check_timeout_s) - time.monotonic()
            try:
                value = fut.result(timeout=max(0.0, remaining))
            except TimeoutError:
                elapsed = (time.monotonic() - t0) * 1000
                results[runner.name] = CheckResult(False, f"timed out after {self.check_timeout_s:g}s", elapsed)
                continue
            except Exception as exc:  # noqa: BLE001 - the check's own failure: reported as not ready
                results[runner.name] = CheckResult(False, f"{type(exc).__name__}: {exc}"[:500], _elapsed_ms(fut, t0))
                continue
            ok = bool(value)
            results[runner.name] = CheckResult(ok, None if ok else "check returned false", _elapsed_ms(fut, t0))
        return results


def _elapsed_ms(fut: Future, t0: float) -> float:
    done_at = getattr(fut, "_moodwatch_done_at", None)
    return ((done_at or time.monotonic()) - t0) * 1000


def tcp_check(addresses: str | Iterable[str], timeout_s: float = 1.0) -> Check:
    """A check that passes when a TCP connection to any of ``addresses`` opens.

    ``addresses``: "host:port" strings or one comma-separated string (Kafka bootstrap form);
    a scheme such as ``http://`` is accepted and its default port used when none is given.
    Proves reachability only; workers should prefer a protocol-level check (metadata request,
    ``es.ping()``, Triton ``is_server_ready``) where their client offers one.
    """
    if isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a.strip()]
    targets = [_host_port(a.strip()) for a in addresses]
    if not targets:
        raise ValueError("tcp_check needs at least one address")

    def check() -> bool:
        last: Exception | None = None
        for host, port in targets:
            try:
                with socket.create_connection((host, port), timeout=timeout_s):
                    return True
            except OSError as exc:
                last = exc
        raise ConnectionError(f"none of {len(targets)} address(es) reachable: {last}")

    return check


def _host_port(address: str) -> tuple[str, int]:
    default_port = None
    if "://" in address:
        parts = urlsplit(address)
        default_port = {"http": 80, "https": 443}.get(parts.scheme)
        if parts.hostname is None:
            raise ValueError(f"bad address {address!r}")
        port = parts.port or default_port
        if port is None:
            raise ValueError(f"no port in {address!r}")
        return parts.hostname, port
    host, sep, port_s = address.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ValueError(f"expected host:port, got {address!r}")
    return host.strip("[]"), int(port_s)


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer
    # One request per connection: a keep-alive scrape connection would outlive shutdown() and keep
    # the target looking "up" after the endpoint was closed.
    protocol_version = "HTTP/1.0"
    server_version = "moodwatch-health"

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    def _dispatch(self, send_body: bool) -> None:
        path = urlsplit(self.path).path.rstrip("/") or "/"
        try:
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept"))
                self._send(200, content_type, encoder(self.server.registry), send_body)
            elif path == "/livez":
                state = self.server.state
                live = state.is_live()
                body = {
                    "live": live,
                    "last_tick_age_s": round(state.tick_age_s(), 3),
                    "stale_after_s": state.stale_after_s,
                }
                self._send_json(200 if live else 503, body, send_body)
            elif path == "/readyz":
                ready, results = self.server.state.readiness()
                body = {"ready": ready, "checks": {n: r.as_dict() for n, r in results.items()}}
                self._send_json(200 if ready else 503, body, send_body)
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n", send_body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # never let a probe kill the server thread
            log.exception("health endpoint failed", path=path)
            try:
                self._send(500, "text/plain; charset=utf-8", b"internal error\n", send_body)
            except OSError:
                pass

    def _send_json(self, status: int, body: dict[str, Any], send_body: bool) -> None:
        data = (json.dumps(body, sort_keys=True) + "\n").encode()
        self._send(status, "application/json", data, send_body)

    def _send(self, status: int, content_type: str, data: bytes, send_body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # stdlib hook for the access log
        log.debug("health request", client=self.address_string(), line=format % args)


class HealthServer(ThreadingHTTPServer):
    """The running endpoint; ``.port`` is the bound port (useful with port 0)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: HealthState, registry: CollectorRegistry) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.state = state
        self.registry = registry
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def host(self) -> str:
        return str(self.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.2}, name="health-http", daemon=True
        )
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop serving, close the socket and join the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            super().shutdown()
            self._thread.join(timeout=5)
        self.server_close()


def serve_health(
    state: HealthState,
    host: str = "127.0.0.1",
    port: int = 9464,
    registry: CollectorRegistry | None = None,
) -> HealthServer:
    """Start the endpoint in a daemon thread; ``port=0`` picks a free port (see ``.port``)."""
    server = HealthServer((host, port), state, registry if registry is not None else REGISTRY)
    server.start()
    log.info("health and metrics endpoint", url=server.url)
    return server


def serve_health_from_settings(
    state: HealthState, settings: Any, registry: CollectorRegistry | None = None
) -> HealthServer | None:
    """``serve_health`` on ``settings.metrics_host:metrics_port``; None when the port is 0 (off)."""
    if not settings.metrics_port:
        return None
    return serve_health(state, settings.metrics_host, settings.metrics_port, registry)
