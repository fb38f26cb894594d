"""Decode image bytes into an RGB array under hard limits.

- bytes: ``max_bytes`` checked before anything is parsed;
- pixels: ``max_pixels`` checked from the header before any pixel is decoded; Pillow's own
  decompression-bomb guard is set to the same value and its warning turned into an error;
- memory: large images are downscaled to ``max_side`` (JPEGs decoded at reduced DCT scale), and full-size
  decodes share a :class:`PixelBudget`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from workers.adapters.images.errors import CorruptImage, ImageError, ImageTooLarge, TooManyPixels, UnsupportedFormat
from workers.common.logs import get_logger

log = get_logger("moodwatch.images")

DEFAULT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """``rgb`` may be a downscaled copy (see ``max_side``); width/height are the upright source size."""

    rgb: np.ndarray  # H x W x 3, uint8, C-contiguous
    width: int
    height: int
    format: str  # canonical Pillow format name, e.g. "JPEG"
    source_bytes: int


_FORMAT_ALIASES = {"JPG": "JPEG", "TIF": "TIFF", "APNG": "PNG", "MPO": "JPEG"}

# (offset, signature, format) — used to name formats Pillow must not be asked to decode.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"),
    (0, b"MM\x00+", "TIFF"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (0, b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEGXL"),
    (0, b"\xff\x0a", "JPEGXL"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"icns", "ICNS"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"v/1\x01", "OPENEXR"),
    (0, b"gimp xcf", "XCF"),
    (0, b"\x1f\x8b", "GZIP"),
    (0, b"PK\x03\x04", "ZIP"),
    (0, b"BM", "BMP"),
)
_FTYP_BRANDS = {
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"hevc": "HEIF",
    b"heim": "HEIF",
    b"heis": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
    b"avif": "AVIF",
    b"avis": "AVIF",
}
_PNM = re.compile(rb"^P[1-7]\s")
_TEXT_BYTES = frozenset(b"\t\n\r\x0c" + bytes(range(0x20, 0x7F)))

_pillow_lock = threading.Lock()
_truncated_warned = False


def parse_formats(spec: str | Iterable[str]) -> tuple[str, ...]:
    """'JPEG,png, jpg' -> ('JPEG', 'PNG'): upper-cased, aliases folded, order kept, no repeats."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for item in items:
        name = str(item).strip().upper()
        if not name:
            continue
        name = _FORMAT_ALIASES.get(name, name)
        if name not in out:
            out.append(name)
    return tuple(out)


def configure_pillow(max_pixels: int) -> None:
    """Process-wide Pillow hardening: bomb limit, bomb warning -> error, no truncated loads.

    Called by ImageLoader; decode_image does not rely on it (it checks pixels itself).
    """
    with _pillow_lock:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
        Image.init()
    _ensure_strict_pillow()


def _ensure_strict_pillow() -> None:
    global _truncated_warned
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Some other code switched it on; truncated images would decode to half-grey garbage.
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        if not _truncated_warned:
            _truncated_warned = True
            log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; reset to False")
    # Not warnings.catch_warnings(): that is not thread-safe on Python 3.11. A process-wide filter
    # (checked each call because test runners reset the filter list) makes the warning raise.
    bomb = Image.DecompressionBombWarning
    if not any(f[0] == "error" and f[2] is bomb for f in warnings.filters):
        with _pillow_lock:
            warnings.filterwarnings("error", category=bomb)


def sniff_format(data: bytes) -> str | None:
    """Name the container format from magic bytes (without Pillow), or None."""
    head = data[:32]
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    for offset, signature, name in _SIGNATURES:
        if head[offset : offset + len(signature)] == signature:
            return name
    if _PNM.match(head):
        return "PPM"
    return None


def _textual_kind(data: bytes) -> str | None:
    """'markup (SVG/HTML/XML)' or 'text' when the bytes are clearly not binary image data."""
    head = data[:1024]
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            head = head[len(bom) :].decode(codec, errors="ignore").encode("utf-8", errors="ignore")
            break
    stripped = head.lstrip()
    if stripped.startswith(b"<"):
        return "markup (SVG/HTML/XML)"
    if stripped and all(b in _TEXT_BYTES for b in stripped[:512]):
        return "text"
    return None


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImage(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise TooManyPixels(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")


@contextlib.contextmanager
def _pillow_errors(what: str) -> Iterator[None]:
    """Map whatever Pillow (or its C decoders) raises onto ImageError subclasses."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"decompression bomb refused while {what}: {exc}") from None
    except UnidentifiedImageError:
        raise CorruptImage("not a decodable image in any allowed format") from None
    except MemoryError:
        raise TooManyPixels(f"out of memory while {what}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
        raise CorruptImage(f"corrupt image while {what}: {type(exc).__name__}: {exc}") from None


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    formats: str | Iterable[str] = DEFAULT_FORMATS,
    max_bytes: int | None = None,
    max_side: int | None = None,
    pixel_gate: Callable[[int], AbstractContextManager[Any]] | None = None,
) -> DecodedImage:
    """Decode encoded image bytes into an H x W x 3 uint8 RGB array, or raise an ImageError.

    Only the allowed Pillow decoders are tried; the pixel count is checked from the header before
    any pixel is decoded; the first frame of an animation is used; EXIF orientation is applied;
    alpha is composited over white; 16-bit, CMYK, palette and grayscale images become RGB.

    max_side: the array is downscaled so its long side is at most this (JPEGs are decoded at a
    reduced scale outright), so a batch never holds full-size bitmaps; width/height stay the source's.
    pixel_gate: called with the source pixel count around the full-size decode (a shared budget
    bounds how many large images are decoded at once).
    """
    allowed = parse_formats(formats)
    size = len(data)
    if max_bytes is not None and size > max_bytes:
        raise ImageTooLarge(f"image is {size} bytes, over the limit of {max_bytes}", stage="decode")
    if size == 0:
        raise CorruptImage("empty image data")
    _ensure_strict_pillow()

    sniffed = sniff_format(data)
    if sniffed is not None and _FORMAT_ALIASES.get(sniffed, sniffed) not in allowed:
        raise UnsupportedFormat(f"{sniffed} is not an allowed image format (allowed: {','.join(allowed)})")
    if sniffed is None:
        kind = _textual_kind(data)
        if kind is not None:
            raise UnsupportedFormat(f"{kind} is not an image")

    with _pillow_errors("reading the header"):
        image = Image.open(io.BytesIO(data), formats=list(allowed))
    try:
        return _decode_opened(image, allowed, max_pixels, size, max_side, pixel_gate)
    finally:
        with contextlib.suppress(Exception):
            image.close()


def _decode_opened(
    image: Image.Image,
    allowed: tuple[str, ...],
    max_pixels: int,
    size: int,
    max_side: int | None,
    pixel_gate: Callable[[int], AbstractContextManager[Any]] | None,
) -> DecodedImage:
    fmt = (image.format or "").upper()
    canonical = _FORMAT_ALIASES.get(fmt, fmt)
    if canonical not in allowed:
        raise UnsupportedFormat(f"{fmt or 'unknown format'} is not an allowed image format")
    width, height = image.size
    _check_pixels(width, height, max_pixels)  # before any pixel is decoded
    opened = image
    with pixel_gate(width * height) if pixel_gate else contextlib.nullcontext():
        drafted = False
        if max_side and canonical == "JPEG" and max(width, height) > max_side:
            with _pillow_errors("decoding"):
                image.draft(None, (max_side, max_side))  # DCT scaling: 1/2, 1/4 or 1/8 of the pixels
            drafted = image.size != (width, height)
        with _pillow_errors("decoding"):
            image.load()  # the first frame only; animations are never advanced
        _check_pixels(*image.size, max_pixels)  # a GIF frame may grow the canvas
        stored = image.size
        image = _apply_orientation(image)
        transposed = image.size != stored
        source = ((height, width) if transposed else (width, height)) if drafted else image.size
        with _pillow_errors("converting to RGB"):
            try:
                rgb = _to_rgb(image)
            except ValueError as exc:
                if "conversion" in str(exc).lower() or "not supported" in str(exc).lower():
                    raise UnsupportedFormat(f"colour mode {image.mode} cannot be converted to RGB") from None
                raise
        del image
        if max_side and max(rgb.size) > max_side:
            with _pillow_errors("downscaling"):
                rgb = rgb.resize(_fit_within(rgb.size, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
        with _pillow_errors("converting to an array"):
            array = np.array(rgb, dtype=np.uint8, copy=True)
        # Free the full-size bitmaps before the budget is released, and hand the pages back to the OS:
        # otherwise each fetch thread's malloc arena keeps its own ~4 bytes/pixel high-water mark.
        del rgb
        with contextlib.suppress(Exception):
            opened.close()
        if width * height >= _TRIM_AFTER_PIXELS:
            _release_freed_memory()
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] <= 0 or array.shape[1] <= 0:
        raise CorruptImage(f"decoder produced an array of shape {array.shape}")
    array = np.ascontiguousarray(array)
    return DecodedImage(rgb=array, width=int(source[0]), height=int(source[1]), format=canonical, source_bytes=size)


_TRIM_AFTER_PIXELS = 4_000_000


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None


def _release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


class PixelBudget:
    """A counting gate over decoded pixels shared by the fetch threads: a decode waits until its
    full-size pixels fit, so peak decode memory is bounded whatever the batch holds."""

    def __init__(self, pixels: int) -> None:
        if pixels <= 0:
            raise ValueError("the pixel budget must be > 0")
        self.pixels = int(pixels)
        self._used = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        need = min(int(pixels), self.pixels)  # one image larger than the budget runs alone
        with self._cond:
            self._cond.wait_for(lambda: self._used + need <= self.pixels)
            self._used += need
        try:
            yield
        finally:
            with self._cond:
                self._used -= need
                self._cond.notify_all()

    @property
    def in_use(self) -> int:
        with self._cond:
            return self._used


def _apply_orientation(image: Image.Image) -> Image.Image:
    """EXIF orientation 2..8 -> upright. A broken EXIF block leaves the image as stored."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF is common and harmless here
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - exif_transpose also rewrites metadata, which may be malformed
        method = {
            2: Image.Transpose.FLIP_LEFT_RIGHT,
            3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270,
            7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90,
        }[orientation]
        try:
            return image.transpose(method)
        except Exception:  # noqa: BLE001 - the image is still usable as stored
            return image


def _over_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image)
        if mode == "I":
            values = np.clip(values, 0, 65535)
        gray = ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return _over_white(image)
    if mode in ("P", "L", "1", "RGB") and "transparency" in image.info:
        return _over_white(image)
    return image.convert("RGB")
