"""URLs as they may appear in logs and error messages."""

from __future__ import annotations

import httpx


def redact_url(url: str | httpx.URL) -> str:
    """scheme://host[:port]/path without userinfo, query or fragment (loggable), truncated."""
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(str(url))
        host = parsed.raw_host.decode("ascii", "replace")
        if ":" in host:
            host = f"[{host}]"
        port = f":{parsed.port}" if parsed.port is not None else ""
        text = f"{parsed.scheme}://{host}{port}{parsed.raw_path.split(b'?', 1)[0].decode('ascii', 'replace')}"
    except Exception:  # noqa: BLE001 - never echo what could not be parsed
        text = "<unparseable URL>"
    return text if len(text) <= 120 else text[:117] + "..."
