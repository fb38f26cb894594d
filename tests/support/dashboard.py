"""Logging in to a running dashboard from tests: users with known passwords and httpx clients."""

from __future__ import annotations

import httpx

from workers.dashboard.auth import hash_password

# name -> (role, password); cheap scrypt (n=2**10) keeps the suite fast, the format is the real one
USERS = {
    "vera": ("viewer", "vera-secret-1"),
    "rob": ("reviewer", "rob-secret-22"),
    "ada": ("admin", "ada-secret-333"),
}


def users_setting(users: dict[str, tuple[str, str]] = USERS) -> str:
    """The MOODWATCH_DASHBOARD_USERS value for `users`."""
    return "\n".join(f"{name}:{role}:{hash_password(password, n=2**10)}" for name, (role, password) in users.items())


def client(server, **kw) -> httpx.Client:
    """A cookie-keeping client of the server (never a proxy from the environment)."""
    return httpx.Client(base_url=server.url, trust_env=False, timeout=30, **kw)


def login(server, name: str, password: str | None = None) -> httpx.Client:
    """A client logged in as `name`, sending its CSRF token on every request."""
    c = client(server)
    token = c.get("/api/session").json()["csrf_token"]
    resp = c.post("/api/login", json={"username": name, "password": password or USERS[name][1]},
                  headers={"X-CSRF-Token": token})  # fmt: skip
    assert resp.status_code == 200, resp.text
    c.headers["X-CSRF-Token"] = resp.json()["csrf_token"]
    return c
