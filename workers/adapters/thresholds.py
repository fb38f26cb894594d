"""Per-channel alert thresholds for the aggregator, read from the thresholds index the dashboard writes.

`ChannelThresholds.overrides(channel)` is a dict lookup (safe to call per post from the event loop);
a daemon thread refreshes the table every `refresh_s`. A store outage keeps the last table and logs;
the aggregator then runs on the thresholds it last saw (or the global ones), never stops for it.
"""

from __future__ import annotations

import threading
from typing import Any

import structlog
from elasticsearch import Elasticsearch

from workers.adapters.review_store import latest_per_channel

log = structlog.get_logger(__name__)


class ChannelThresholds:
    def __init__(self, es: Elasticsearch, index: str, *, refresh_s: float = 30.0) -> None:
        self.es = es
        self.index = index
        self.refresh_s = refresh_s
        self._table: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.failures = 0

    def overrides(self, channel: str) -> dict[str, Any]:
        """The DetectorConfig fields set for this channel ({} = the global settings)."""
        return self._table.get(channel, {})

    def refresh(self) -> bool:
        """Read the newest change per channel now; False (and the old table kept) when the store fails."""
        try:
            latest = latest_per_channel(self.es, self.index)
        except Exception as exc:  # noqa: BLE001 - any store trouble: keep the thresholds we have
            self.failures += 1
            log.warning("thresholds_refresh_failed", index=self.index, error=f"{type(exc).__name__}: {exc}"[:300])
            return False
        table = {channel: change.overrides() for channel, change in latest.items()}
        if table != self._table:
            log.info("thresholds_changed", channels={c: v for c, v in table.items() if v})
        self._table = table  # one reference swap: readers see the old or the new table, never a mix
        self.refreshes += 1
        return True

    def start(self) -> ChannelThresholds:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="thresholds-refresh", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
