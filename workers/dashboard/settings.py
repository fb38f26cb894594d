"""Settings of the dashboard: the store it reads, where it listens, who may log in, what it may serve."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from workers.common.settings import (
    ElasticsearchSettings,
    EventTimeSettings,
    LocalImageSettings,
    ObservabilitySettings,
)


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").replace("\n", ",").split(",") if item.strip()]


class DashboardSettings(ElasticsearchSettings, LocalImageSettings, EventTimeSettings, ObservabilitySettings):
    dashboard_host: str = Field("127.0.0.1", description="address the dashboard binds to")
    dashboard_port: int = Field(8050, ge=0, le=65535, description="dashboard port (0 = pick a free one)")
    dashboard_image_root: Path | None = Field(
        None, description="folder the gallery may serve file: images from (default: image_local_root; unset = none)"
    )
    dashboard_default_range: Literal["15m", "1h", "6h", "24h", "7d", "30d", "all"] = Field(
        "24h", description="time range the dashboard opens with"
    )
    dashboard_refresh_s: int = Field(15, ge=0, description="auto-refresh period of the page in seconds; 0 = off")
    dashboard_allowed_hosts: str = Field(
        "127.0.0.1,localhost,[::1]",
        description=(
            "Host header values answered, comma separated (*.example.com allowed); any other Host gets 400 "
            "(DNS-rebinding guard). Set it to the ingress host name in a cluster"
        ),
    )
    dashboard_secret_key: SecretStr | None = Field(
        None,
        description=(
            "key that signs session cookies (secret, 32+ characters); unset = a random key per process, so "
            "sessions end on restart and replicas do not share them"
        ),
    )
    dashboard_users: SecretStr | None = Field(
        None,
        description=(
            "local logins (secret): NAME:ROLE:HASH entries separated by commas or newlines; ROLE is viewer, "
            "reviewer or admin; HASH from `moodwatch dashboard hash-password`"
        ),
    )
    dashboard_session_max_age_s: int = Field(
        8 * 3600, ge=60, description="a login lasts this long (seconds); the cookie is signed and expires then"
    )
    dashboard_cookie_secure: bool = Field(
        True, description="session cookie only over HTTPS (Secure flag); off only for plain-HTTP loopback use"
    )
    dashboard_auth_proxy_user_header: str | None = Field(
        None,
        description=(
            "trust this request header as the user name (e.g. X-Auth-Request-Email from oauth2-proxy), only from "
            "peers in dashboard_auth_proxy_ips; unset = off"
        ),
    )
    dashboard_auth_proxy_groups_header: str | None = Field(
        None, description="header with the proxied user's groups (comma separated), mapped to roles below"
    )
    dashboard_auth_proxy_ips: str | None = Field(
        None, description="addresses / CIDRs of the auth proxy (comma separated); others cannot claim an identity"
    )
    dashboard_reviewer_groups: str | None = Field(
        None, description="proxy groups whose members are reviewers (comma separated); other proxied users are viewers"
    )
    dashboard_admin_groups: str | None = Field(
        None, description="proxy groups whose members are admins (may also set per-channel alert thresholds)"
    )
    dashboard_login_max_failures: int = Field(
        5, ge=1, description="failed logins per user name within 5 minutes before further tries are refused (429)"
    )
    dashboard_keep_alive_s: int = Field(5, ge=1, le=300, description="idle keep-alive connections close after this")
    dashboard_header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "a connection must send a complete request head within this many seconds of opening (or of its "
            "previous response), else it is closed (slow-loris guard)"
        ),
    )
    dashboard_max_connections: int = Field(
        256, ge=1, description="open connections beyond this are closed at once; requests beyond it answer 503"
    )

    @property
    def image_root_for_dashboard(self) -> Path | None:
        return self.dashboard_image_root or self.image_local_root

    @property
    def allowed_hosts(self) -> list[str]:
        return split_list(self.dashboard_allowed_hosts)
