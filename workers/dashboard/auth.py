"""Who is looking, and what they may do: logins, roles, sessions, CSRF, the trusted auth-proxy header.

- Local logins: `MOODWATCH_DASHBOARD_USERS` holds NAME:ROLE:HASH entries; HASH is scrypt (stdlib)
  from `moodwatch dashboard hash-password`. A login stores the user in a session cookie signed with
  `MOODWATCH_DASHBOARD_SECRET_KEY` (Starlette's SessionMiddleware: itsdangerous, HttpOnly,
  SameSite=Strict, Secure unless turned off, expires after dashboard_session_max_age_s). Every
  request re-checks the user against the configured list, so removing a user ends their sessions.
- Auth proxy (off by default): behind an OIDC ingress (oauth2-proxy and the like) the proxy sends the
  user name and groups in headers; they are believed only when the TCP peer is one of
  `MOODWATCH_DASHBOARD_AUTH_PROXY_IPS`, so a client cannot claim an identity by sending the header.
- Roles: viewer (reads) < reviewer (+ reviews) < admin (+ channel alert thresholds).
- CSRF: every write (POST/PUT/DELETE, login included) must carry the session's random token in
  `X-CSRF-Token` (synchronizer token, compared in constant time) and, when the browser sends an
  Origin, an Origin of this very host.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

from fastapi import HTTPException, Request

from schemas.reviews import Role
from workers.common.logs import get_logger
from workers.dashboard.settings import DashboardSettings, split_list

log = get_logger("moodwatch.dashboard.auth")

ROLE_RANK: dict[str, int] = {"viewer": 0, "reviewer": 1, "admin": 2}
CSRF_HEADER = "x-csrf-token"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
FAILURE_WINDOW_S = 300.0


class UsersError(ValueError):
    pass


# -- passwords -----------------------------------------------------------------------------------
def hash_password(password: str, *, n: int = SCRYPT_N, salt: bytes | None = None) -> str:
    """scrypt$N$r$p$salt$hash (base64, no colons: safe inside NAME:ROLE:HASH)."""
    if not password:
        raise ValueError("empty password")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    b64 = lambda raw: base64.urlsafe_b64encode(raw).decode().rstrip("=")  # noqa: E731 - a one-line codec
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt)}${b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        unb64 = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
        want = unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# a hash to check against when the user name is unknown, so both cases take the same time
_DUMMY_HASH = hash_password("not-a-password", salt=b"\0" * 16)


def parse_users(text: str | None) -> dict[str, tuple[Role, str]]:
    """NAME:ROLE:HASH entries (comma or newline separated) -> {name: (role, hash)}."""
    users: dict[str, tuple[Role, str]] = {}
    for entry in split_list(text or ""):
        parts = entry.split(":")
        if len(parts) != 3 or not parts[0] or parts[1] not in ROLE_RANK or not parts[2].startswith("scrypt$"):
            raise UsersError(f"bad user entry {parts[0]!r}: want NAME:ROLE:HASH with ROLE viewer|reviewer|admin")
        if parts[0] in users:
            raise UsersError(f"user {parts[0]!r} listed twice")
        users[parts[0]] = (parts[1], parts[2])  # type: ignore[assignment]
    return users


# -- identities ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class User:
    name: str
    role: Role
    method: Literal["session", "proxy"]

    def may(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "role": self.role, "auth_method": self.method}


class LoginLimiter:
    """Failed logins per user name in a sliding window (in memory, per process)."""

    def __init__(self, max_failures: int, window_s: float = FAILURE_WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, name: str, now: float) -> list[float]:
        kept = [t for t in self._failures.get(name, []) if now - t < self.window_s]
        self._failures[name] = kept
        return kept

    def blocked(self, name: str) -> bool:
        with self._lock:
            return len(self._recent(name, time.monotonic())) >= self.max_failures

    def failed(self, name: str) -> None:
        with self._lock:
            self._recent(name, time.monotonic()).append(time.monotonic())
            if len(self._failures) > 10_000:  # bound memory under a spray of names
                self._failures = {k: v for k, v in self._failures.items() if v}

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


class Authenticator:
    def __init__(self, settings: DashboardSettings) -> None:
        raw = settings.dashboard_users.get_secret_value() if settings.dashboard_users else None
        self.users = parse_users(raw)
        self.max_age_s = settings.dashboard_session_max_age_s
        self.proxy_header = (settings.dashboard_auth_proxy_user_header or "").lower() or None
        self.groups_header = (settings.dashboard_auth_proxy_groups_header or "").lower() or None
        networks = split_list(settings.dashboard_auth_proxy_ips)
        self.proxy_networks = [ipaddress.ip_network(n, strict=False) for n in networks]
        self.reviewer_groups = set(split_list(settings.dashboard_reviewer_groups))
        self.admin_groups = set(split_list(settings.dashboard_admin_groups))
        self.limiter = LoginLimiter(settings.dashboard_login_max_failures)
        if self.proxy_header and not self.proxy_networks:
            raise UsersError("dashboard_auth_proxy_user_header needs dashboard_auth_proxy_ips (whom to believe)")
        if not self.users and not self.proxy_header:
            log.warning("dashboard_no_logins", hint="set MOODWATCH_DASHBOARD_USERS or the auth-proxy settings")

    # -- who is this ---------------------------------------------------------------------------
    def user(self, request: Request) -> User | None:
        proxied = self._proxy_user(request)
        if proxied is not None:
            return proxied
        data = request.session.get("user")
        if not isinstance(data, dict) or time.time() - float(data.get("at", 0)) > self.max_age_s:
            return None
        known = self.users.get(str(data.get("name")))
        if known is None or known[0] != data.get("role"):  # removed or re-roled since the login
            return None
        return User(name=data["name"], role=known[0], method="session")

    def _from_proxy(self, request: Request) -> bool:
        if not self.proxy_header or request.client is None:
            return False
        try:
            peer = ipaddress.ip_address(request.client.host)
        except ValueError:
            return False
        return any(peer in net for net in self.proxy_networks)

    def _proxy_user(self, request: Request) -> User | None:
        if not self._from_proxy(request):
            return None
        name = request.headers.get(self.proxy_header or "", "").strip()
        if not name or len(name) > 256 or not name.isprintable():
            return None
        groups = set(split_list(request.headers.get(self.groups_header, ""))) if self.groups_header else set()
        role: Role = "viewer"
        if groups & self.admin_groups:
            role = "admin"
        elif groups & self.reviewer_groups:
            role = "reviewer"
        return User(name=name, role=role, method="proxy")

    # -- logging in and out --------------------------------------------------------------------
    def login(self, request: Request, name: str, password: str) -> User | None:
        if self.limiter.blocked(name):
            raise HTTPException(429, "too many failed logins; wait a few minutes")
        role, encoded = self.users.get(name, ("viewer", _DUMMY_HASH))
        if name not in self.users or not verify_password(password, encoded):
            self.limiter.failed(name)
            log.warning("dashboard_login_failed", user=name[:64])
            return None
        self.limiter.succeeded(name)
        request.session.clear()  # a fresh session (and CSRF token) per login
        request.session["user"] = {"name": name, "role": role, "at": time.time()}
        csrf_token(request)
        log.info("dashboard_login", user=name, role=role)
        return User(name=name, role=role, method="session")

    @staticmethod
    def logout(request: Request) -> None:
        request.session.clear()

    # -- guards (FastAPI dependencies call these) ----------------------------------------------
    def require(self, request: Request, role: Role) -> User:
        user = self.user(request)
        if user is None:
            raise HTTPException(401, "log in first")
        if not user.may(role):
            raise HTTPException(403, f"{user.role} may not do this; it needs the {role} role")
        return user


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request) -> None:
    """Raise 403 unless the write carries this session's token (and, if any, a same-host Origin)."""
    expected = request.session.get("csrf")
    sent = request.headers.get(CSRF_HEADER, "")
    if not isinstance(expected, str) or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise HTTPException(403, "missing or wrong CSRF token")
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise HTTPException(403, "cross-origin write refused")
