"""Thumbnails of analysed images: long side <= 256 px, WebP (a few KB), for the dashboard.

Made from the decoded image the worker already holds (upright, at most the analysis size), so it
costs a resize and an encode (~5-15 ms), never a second fetch. The region boxes are not drawn in:
the page overlays them (they are in source pixels; the thumbnail keeps the aspect ratio).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from schemas.results import Thumbnail

MAX_SIDE = 256
WEBP_QUALITY = 60


def make_thumbnail(rgb: np.ndarray, *, max_side: int = MAX_SIDE, quality: int = WEBP_QUALITY) -> Thumbnail:
    """A WebP thumbnail of an H x W x 3 (or H x W grey) uint8 image."""
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    image.save(buf, format="WEBP", quality=quality, method=4)
    return Thumbnail(format="webp", width=image.width, height=image.height,
                     data=base64.b64encode(buf.getvalue()).decode("ascii"))  # fmt: skip


def thumbnail_or_none(rgb: np.ndarray) -> Thumbnail | None:
    """make_thumbnail, or None when the image cannot be encoded: a thumbnail never costs a post its result."""
    try:
        return make_thumbnail(rgb)
    except Exception:  # noqa: BLE001 - any encoder trouble: the result goes out without a thumbnail
        return None
