"""The dashboard's routes (FastAPI on uvicorn; see server.py for the server, auth.py for who may do what).

Reading (viewer and up; ``range`` = 15m | 1h | 6h | 24h | 7d | 30d | all, relative to the newest post):
``/api/timeline``, ``/api/emotions``, ``/api/channels``, ``/api/alerts``, ``/api/gallery`` (the charts,
Elasticsearch aggregations), ``/api/queue?alert_id=`` or ``?channel=&range=`` (the review queue),
``/api/reviews?post_id=`` (a post's audit trail), ``/api/precision?range=`` (model and alert precision
per channel from the reviews), ``/api/thresholds``, ``/thumb/<post_id>`` (the stored thumbnail),
``/image/<post_id>`` (``file:`` images under the allowed root).
Writing (CSRF token required): ``POST /api/login``, ``/api/logout``, ``/api/reviews`` (reviewer),
``/api/thresholds/<channel>`` (admin). Open: ``/``, ``/static/*``, ``/api/session``, ``/healthz``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elastic_transport import TransportError
from elasticsearch import ApiError
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS
from workers.adapters.review_store import ReviewStore
from workers.common.logs import get_logger
from workers.dashboard.auth import Authenticator, User, check_csrf, csrf_token
from workers.dashboard.http_guards import DashboardMetrics, GuardsMiddleware
from workers.dashboard.lookups import Lookups
from workers.dashboard.precision import channel_precision
from workers.dashboard.queries import IMAGE_TYPES, RANGES, BadRequest, DashboardQueries, local_image_path
from workers.dashboard.review_queue import ReviewQueue, alerts_covering
from workers.dashboard.reviews import ReviewRequest, ThresholdsRequest, build_review, build_thresholds
from workers.dashboard.settings import DashboardSettings

log = get_logger("moodwatch.dashboard")

STATIC_DIR = Path(__file__).resolve().parent / "static"
THUMB_TYPES = {"webp": "image/webp", "jpeg": "image/jpeg", "png": "image/png"}


class LoginRequest(BaseModel):
    username: str
    password: str


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _bounded(value: int | None, default: int, lo: int, hi: int) -> int:
    return default if value is None else min(hi, max(lo, value))


def create_app(settings: DashboardSettings, es: Any, metrics: DashboardMetrics, secret_key: str) -> FastAPI:
    queries = DashboardQueries(es, settings)
    lookups = Lookups(es, settings)
    store = ReviewStore(es, settings)
    queue = ReviewQueue(queries, store)
    auth = Authenticator(settings)
    image_root = settings.image_root_for_dashboard

    app = FastAPI(
        docs_url=None, redoc_url=None, openapi_url=None,
        middleware=[
            Middleware(GuardsMiddleware, metrics=metrics),
            Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False),
            Middleware(SessionMiddleware, secret_key=secret_key, session_cookie="moodwatch_session",
                       max_age=settings.dashboard_session_max_age_s, same_site="strict",
                       https_only=settings.dashboard_cookie_secure),
        ],
    )  # fmt: skip
    app.state.store = store

    # -- errors: one JSON shape ----------------------------------------------------------------
    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors()))

    @app.exception_handler(ValidationError)
    async def _invalid_model(request: Request, exc: ValidationError) -> JSONResponse:
        return _error(422, "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors()))

    @app.exception_handler(ApiError)
    @app.exception_handler(TransportError)
    async def _store(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dashboard_error", path=request.url.path, error=f"{type(exc).__name__}: {str(exc)[:300]}")
        return _error(502, f"store query failed: {type(exc).__name__}")

    # -- who may ---------------------------------------------------------------------------------
    def reader(request: Request) -> User:
        return auth.require(request, "viewer")

    def writer(role: str):
        def guard(request: Request) -> User:
            user = auth.require(request, role)  # type: ignore[arg-type]
            check_csrf(request)
            return user

        return guard

    # -- open ------------------------------------------------------------------------------------
    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/session")
    def session(request: Request) -> dict[str, Any]:
        user = auth.user(request)
        return {"user": user.as_dict() if user else None, "csrf_token": csrf_token(request),
                "password_login": bool(auth.users), "proxy_login": bool(auth.proxy_header)}  # fmt: skip

    @app.post("/api/login")
    def login(body: LoginRequest, request: Request) -> dict[str, Any]:
        check_csrf(request)
        user = auth.login(request, body.username, body.password)
        metrics.logins.labels(outcome="ok" if user else "refused").inc()
        if user is None:
            raise HTTPException(401, "wrong user name or password")
        return {"user": user.as_dict(), "csrf_token": csrf_token(request)}

    @app.post("/api/logout")
    def logout(request: Request) -> dict[str, bool]:
        check_csrf(request)
        auth.logout(request)
        return {"ok": True}

    # -- charts ----------------------------------------------------------------------------------
    def image_url(doc: dict[str, Any]) -> str | None:
        return f"/image/{doc['post_id']}" if local_image_path(doc.get("image_ref"), image_root) else None

    def thumbnail_url(doc: dict[str, Any]) -> str | None:
        return f"/thumb/{doc['post_id']}" if (doc.get("thumbnail") or {}).get("format") in THUMB_TYPES else None

    @app.get("/api/config")
    def config(user: User = Depends(reader)) -> dict[str, Any]:
        return {"default_range": settings.dashboard_default_range, "ranges": list(RANGES),
                "refresh_s": settings.dashboard_refresh_s, "emotions": list(MIKELS_EMOTIONS),
                "negative_emotions": sorted(NEGATIVE_EMOTIONS)}  # fmt: skip

    @app.get("/api/timeline")
    def timeline(range: str | None = None, channels: str = "", user: User = Depends(reader)) -> dict[str, Any]:
        wanted = [c for c in channels.split(",") if c] or None
        return queries.timeline(range or settings.dashboard_default_range, wanted)

    @app.get("/api/emotions")
    def emotions(range: str | None = None, channel: str = "", user: User = Depends(reader)) -> dict[str, Any]:
        return queries.emotions(range or settings.dashboard_default_range, channel or None)

    @app.get("/api/channels")
    def channels(range: str | None = None, user: User = Depends(reader)) -> dict[str, Any]:
        return queries.channels(range or settings.dashboard_default_range)

    @app.get("/api/alerts")
    def alerts(range: str | None = None, size: int | None = None, user: User = Depends(reader)) -> dict[str, Any]:
        return queries.alerts_list(range or settings.dashboard_default_range, _bounded(size, 50, 1, 500))

    @app.get("/api/gallery")
    def gallery(range: str | None = None, channel: str = "", size: int | None = None,
                user: User = Depends(reader)) -> dict[str, Any]:  # fmt: skip
        data = queries.gallery(range or settings.dashboard_default_range, channel or None, _bounded(size, 12, 1, 100),
                               image_url)  # fmt: skip
        for doc in data["posts"]:
            doc["thumbnail_url"] = thumbnail_url(doc)
            doc.pop("thumbnail", None)
        return data

    @app.get("/image/{post_id}")
    def image(post_id: str, user: User = Depends(reader)) -> Response:
        path = local_image_path(queries.image_ref(post_id), image_root)
        if path is None:
            raise HTTPException(404, "no local image for this post")
        if path.stat().st_size > settings.image_max_bytes:
            raise HTTPException(413, "image too large")
        return Response(path.read_bytes(), media_type=IMAGE_TYPES[path.suffix.lower()],
                        headers={"cache-control": "private, max-age=300"})  # fmt: skip

    @app.get("/thumb/{post_id}")
    def thumb(post_id: str, user: User = Depends(reader)) -> Response:
        found = lookups.thumbnail(post_id)
        if not found or found.get("format") not in THUMB_TYPES or not found.get("data"):
            raise HTTPException(404, "no thumbnail for this post")
        try:
            data = base64.b64decode(found["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HTTPException(404, "unreadable thumbnail") from exc
        headers = {"cache-control": "private, max-age=300"}
        return Response(data, media_type=THUMB_TYPES[found["format"]], headers=headers)

    # -- the moderators' loop --------------------------------------------------------------------
    @app.get("/api/queue")
    def review_queue(alert_id: str = "", channel: str = "", range: str | None = None, size: int | None = None,
                     user: User = Depends(reader)) -> dict[str, Any]:  # fmt: skip
        return queue.posts(alert_id=alert_id or None, channel=channel or None,
                           range_name=range or settings.dashboard_default_range, size=_bounded(size, 50, 1, 200),
                           image_url=image_url, thumbnail_url=thumbnail_url)  # fmt: skip

    @app.get("/api/reviews")
    def post_reviews(post_id: str, user: User = Depends(reader)) -> dict[str, Any]:
        return {"post_id": post_id, "reviews": store.reviews_of_posts([post_id])[post_id]}

    @app.post("/api/reviews", status_code=201)
    def add_review(body: ReviewRequest, user: User = Depends(writer("reviewer"))) -> dict[str, Any]:
        result = lookups.result(body.post_id)
        if result is None:
            raise HTTPException(404, f"no analysed post {body.post_id!r}")
        created = datetime.fromisoformat(str(result["created_at"]).replace("Z", "+00:00"))
        alert_ids = alerts_covering(queue.alerts_of_post(result["channel"], created), result["channel"], created)
        review = build_review(body, result, user, alert_ids, datetime.now(UTC))
        store.add_review(review)
        metrics.reviews.labels(action=review.action).inc()
        log.info("review_stored", review_id=review.review_id, post_id=review.post_id, action=review.action,
                 reviewer=user.name, auth=user.method)  # fmt: skip
        return review.model_dump(mode="json")

    @app.get("/api/precision")
    def precision(range: str | None = None, user: User = Depends(reader)) -> dict[str, Any]:
        rng = range or settings.dashboard_default_range
        bounds = queries.bounds(rng)
        since, until = (bounds[0], bounds[1]) if bounds and RANGES[rng] is not None else (None, None)
        reviews = store.reviews(since=since, until=until)
        alert_ids = {a for r in reviews for a in r.get("alert_ids") or []}
        return {"range": rng, "reviews": len(reviews),
                "channels": channel_precision(reviews, lookups.alerts_by_id(alert_ids))}  # fmt: skip

    @app.get("/api/thresholds")
    def thresholds(user: User = Depends(reader)) -> dict[str, Any]:
        latest = store.latest_thresholds()
        return {"channels": [c.model_dump(mode="json") for _, c in sorted(latest.items())]}

    @app.post("/api/thresholds/{channel}", status_code=201)
    def set_thresholds(channel: str, body: ThresholdsRequest, user: User = Depends(writer("admin"))) -> dict[str, Any]:
        change = build_thresholds(channel, body, user, datetime.now(UTC))
        store.add_thresholds(change)
        log.info("thresholds_changed", channel=channel, by=user.name, **change.overrides())
        return change.model_dump(mode="json")

    return app
