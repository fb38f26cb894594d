"""HTTP-level guards and counters of the dashboard that sit below the routes.

- `GuardsMiddleware` (ASGI): security headers on every answer, and the Prometheus counters per
  route template (never per post or per user).
- `bounded_h11_protocol(...)`: uvicorn's h11 protocol with two limits uvicorn lacks: a connection
  must deliver a complete request head within `header_timeout_s` of opening (or of its previous
  response) or it is closed (uvicorn's keep-alive timer only starts after a first response, and any
  byte cancels it, so a silent or trickling client would be held forever), and connections beyond
  `max_connections` are closed as soon as they are accepted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from uvicorn.protocols.http.h11_impl import H11Protocol

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")  # fmt: skip
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


@dataclass
class DashboardMetrics:
    requests: Counter
    duration: Histogram
    reviews: Counter
    logins: Counter
    connections: Gauge
    closed: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DashboardMetrics:
        return cls(
            requests=Counter("moodwatch_dashboard_requests", "Dashboard HTTP requests by endpoint and status code",
                             ["endpoint", "code"], registry=registry),
            duration=Histogram(
                "moodwatch_dashboard_request_seconds", "Dashboard request time (Elasticsearch queries included)",
                ["endpoint"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=registry,
            ),
            reviews=Counter("moodwatch_dashboard_reviews", "Reviews stored, by action", ["action"], registry=registry),
            logins=Counter("moodwatch_dashboard_logins", "Login attempts by outcome", ["outcome"], registry=registry),
            connections=Gauge("moodwatch_dashboard_open_connections", "Open HTTP connections of the page server",
                              registry=registry),
            closed=Counter("moodwatch_dashboard_connections_closed", "Connections closed by a guard, by reason",
                           ["reason"], registry=registry),
        )  # fmt: skip


class GuardsMiddleware:
    def __init__(self, app: Any, metrics: DashboardMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((k, v) for k, v in SECURITY_HEADERS if k not in present)]  # fmt: skip
                if b"cache-control" not in present:
                    message["headers"].append((b"cache-control", b"no-store"))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(endpoint=endpoint, code=str(status)).inc()
            self.metrics.duration.labels(endpoint=endpoint).observe(time.perf_counter() - t0)


def bounded_h11_protocol(header_timeout_s: float, max_connections: int, metrics: DashboardMetrics) -> type:
    class BoundedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            metrics.connections.set(len(self.connections))
            if len(self.connections) > max_connections:
                metrics.closed.labels(reason="over_limit").inc()
                transport.abort()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)
            metrics.connections.set(len(self.connections))

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm()  # a request head arrived: the request is being served

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request head must arrive in time as well

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return
            if not self.transport.is_closing():
                metrics.closed.labels(reason="header_timeout").inc()
                self.transport.close()

    return BoundedH11Protocol
