"""Image failures: every one is an ImageError whose ``stage`` ("fetch" or "decode") and ``code`` (stable)
go into dead-letter headers and metrics."""

from __future__ import annotations

_MAX_MESSAGE = 300


class ImageError(Exception):
    """An image that cannot be used. ``stage`` is "fetch" or "decode"; ``code`` is stable."""

    stage = "decode"
    code = "image_error"

    def __init__(self, message: str, *, stage: str | None = None) -> None:
        if len(message) > _MAX_MESSAGE:
            message = message[: _MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        if stage is not None:
            self.stage = stage


class ImageTooLarge(ImageError):
    """More bytes than image_max_bytes."""

    stage = "fetch"
    code = "image_too_large"


class TooManyPixels(ImageError):
    """More pixels than image_max_pixels (decompression bombs included)."""

    stage = "decode"
    code = "too_many_pixels"


class UnsupportedFormat(ImageError):
    """Not one of the allowed formats (SVG, HTML, text, PDF, ... served as an image)."""

    stage = "decode"
    code = "unsupported_format"


class CorruptImage(ImageError):
    """Truncated, damaged or non-image bytes."""

    stage = "decode"
    code = "corrupt_image"


class FetchFailed(ImageError):
    """Unreachable, DNS failure, timeout, or HTTP status >= 400 (``status`` then set)."""

    stage = "fetch"
    code = "fetch_failed"

    def __init__(self, message: str, *, stage: str | None = None, status: int | None = None) -> None:
        super().__init__(message, stage=stage)
        self.status = status


class FetchTimeout(FetchFailed):
    """The total fetch deadline (image_fetch_timeout_s) passed."""

    code = "fetch_timeout"


class BlockedURL(ImageError):
    """A URL refused by the SSRF policy (scheme, host allowlist, address)."""

    stage = "fetch"
    code = "blocked_url"


class LocalPathRefused(ImageError):
    """A local path refused: local paths disabled, outside image_local_root, not a regular file."""

    stage = "fetch"
    code = "local_path_refused"
