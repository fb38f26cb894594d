"""Settings of the dashboard: the store it reads, where it listens, what it may serve."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from workers.common.settings import (
    ElasticsearchSettings,
    EventTimeSettings,
    LocalImageSettings,
    ObservabilitySettings,
)


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

    @property
    def image_root_for_dashboard(self) -> Path | None:
        return self.dashboard_image_root or self.image_local_root
