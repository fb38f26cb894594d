"""Fetch and decode post images with hard limits; bad input never stops the stream.

Every failure is an :class:`ImageError` subclass whose ``stage`` ("fetch" or "decode") and
``code`` go into dead-letter headers and metrics. Nothing here logs image bytes, base64 text or
URL query strings (signed URLs carry credentials).

Limits (all from settings):
- bytes: ``image_max_bytes`` for URL bodies (Content-Length refused early, the stream aborted as
  soon as one byte too many arrives), base64 (checked from the text length before decoding) and
  local files;
- pixels: ``image_max_pixels`` checked from the header before any pixel is decoded; Pillow's own
  decompression-bomb guard is set to the same value and its warning turned into an error;
- time: ``image_fetch_timeout_s`` is one deadline for the whole fetch (DNS, connect, TLS, every
  redirect hop and every read), not a per-read timeout.

SSRF: only http/https URLs to hosts on ``image_allowed_hosts``; the host is resolved here and every
address is vetted (private, loopback, link-local, multicast, reserved, unspecified, CGNAT, cloud
metadata, IPv4 embedded in IPv6) unless ``image_allow_private_addresses`` (tests only; metadata
addresses stay refused even then). The resolution happens inside the connection itself and the
socket connects to the vetted address, so a DNS rebind between check and connect cannot redirect
it; TLS SNI and the Host header keep the original name. Redirects are followed by hand (at most
``MAX_REDIRECTS``), each hop checked again. Environment proxies and cookies are ignored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import ctypes.util
import functools
import http.cookiejar
import io
import ipaddress
import logging
import os
import re
import socket
import stat
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager

import httpcore
import httpx
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from workers.common.redact import redact_url

if TYPE_CHECKING:  # pragma: no cover
    from schemas.posts import ImageRef
    from workers.common.settings import ImageSettings

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
USER_AGENT = "moodwatch-image-fetcher/0.1"
_CHUNK = 64 * 1024
_MAX_MESSAGE = 300


# ---------------------------------------------------------------------------------------------
# Errors


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


# ---------------------------------------------------------------------------------------------
# Decoding


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
    b"heic": "HEIF", b"heix": "HEIF", b"hevc": "HEIF", b"heim": "HEIF", b"heis": "HEIF",
    b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF",
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
    pixel_gate: Callable[[int], ContextManager[Any]] | None = None,
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
    pixel_gate: Callable[[int], ContextManager[Any]] | None,
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
            2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
        }[orientation]
        try:
            return image.transpose(method)
        except Exception:  # noqa: BLE001
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


# ---------------------------------------------------------------------------------------------
# URL policy (SSRF)

# Cloud metadata endpoints: refused always, even with image_allow_private_addresses.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure IMDS, OpenStack, DigitalOcean, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.170.23",  # AWS EKS pod identity
        "169.254.0.23",  # Tencent Cloud
        "168.63.129.16",  # Azure wireserver (a public address!)
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (classic)
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::23",  # AWS EKS pod identity over IPv6
    )
)
METADATA_HOSTS = frozenset(
    {
        "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.com",
        "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com",
    }
)
_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}\.?$")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _strip_scope(text: str) -> str:
    return text.split("%", 1)[0]


class UrlPolicy:
    """Which URLs may be fetched: scheme, host allowlist, and the addresses the host resolves to.

    ``allowed_hosts``: comma-separated; ``*`` = any public host; ``example.com`` exact;
    ``*.example.com`` any subdomain (not the apex itself); IP literals compare exactly.
    """

    schemes = ("http", "https")

    def __init__(
        self,
        allowed_hosts: str | Sequence[str] = "*",
        *,
        allow_private: bool = False,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        entries = allowed_hosts.split(",") if isinstance(allowed_hosts, str) else list(allowed_hosts)
        self.allow_private = bool(allow_private)
        self.max_redirects = int(max_redirects)
        self._any = False
        self._exact: set[str] = set()
        self._suffixes: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry == "*":
                self._any = True
                continue
            wildcard = entry.startswith("*.")
            name = entry[2:] if wildcard else entry
            literal = _parse_ip_literal(name)
            if literal is not None:
                if wildcard:
                    raise ValueError(f"image_allowed_hosts: wildcard on an IP address: {raw!r}")
                self._exact.add(str(literal))
                continue
            try:
                name = name.encode("idna").decode("ascii") if not name.isascii() else name
            except UnicodeError as exc:
                raise ValueError(f"image_allowed_hosts: invalid host {raw!r}") from exc
            if "*" in name or not all(_LABEL.match(label) for label in name.split(".")):
                raise ValueError(f"image_allowed_hosts: invalid entry {raw!r} (use host, *.domain or *)")
            (self._suffixes.append(name) if wildcard else self._exact.add(name))

    @classmethod
    def from_settings(cls, settings: ImageSettings) -> UrlPolicy:
        return cls(settings.image_allowed_hosts, allow_private=settings.image_allow_private_addresses)

    # -- checks ---------------------------------------------------------------------------------

    def host_allowed(self, host: str) -> bool:
        """The allowlist alone (no address checks)."""
        host = host.lower().rstrip(".")
        literal = _parse_ip_literal(host)
        if literal is not None:
            host = str(literal)
        if self._any or host in self._exact:
            return True
        return any(host.endswith("." + suffix) for suffix in self._suffixes)

    def address_refusal(self, ip: IPAddress | str) -> str | None:
        """Why an address may not be fetched from, or None if it may."""
        if isinstance(ip, str):
            ip = ipaddress.ip_address(_strip_scope(ip))
        if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
            ip = ipaddress.IPv6Address(_strip_scope(str(ip)))
        if ip in METADATA_ADDRESSES:
            return "cloud metadata address"
        if isinstance(ip, ipaddress.IPv6Address):
            embedded: list[ipaddress.IPv4Address] = []
            if ip.ipv4_mapped is not None:
                embedded.append(ip.ipv4_mapped)
            if ip.sixtofour is not None:
                embedded.append(ip.sixtofour)
            if ip.teredo is not None:
                embedded.append(ip.teredo[1])
            if any(ip in net for net in _NAT64):
                embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            for inner in embedded:
                reason = self.address_refusal(inner)
                if reason is not None:
                    return f"{reason} (embedded in {ip})"
        if self.allow_private:
            return None
        checks = (
            ("unspecified", ip.is_unspecified),
            ("loopback", ip.is_loopback),
            ("link-local", ip.is_link_local),
            ("multicast", ip.is_multicast),
            ("private", ip.is_private),
            ("reserved", ip.is_reserved),
            ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
            ("not globally routable", not ip.is_global),
        )
        for reason, hit in checks:
            if hit:
                return f"{reason} address"
        return None

    def check_host(self, host: str) -> IPAddress | None:
        """Allowlist, host-name and literal-address checks; returns the address for IP literals."""
        host = host.lower()
        name = host.rstrip(".")
        if not name:
            raise BlockedURL("URL has no host")
        literal = _parse_ip_literal(name)
        if literal is None and _LEGACY_IPV4.match(name):
            raise BlockedURL(f"non-canonical IPv4 literal {name!r} refused")
        if literal is None:
            if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
                raise BlockedURL(f"invalid host name {name[:80]!r}")
            if name in METADATA_HOSTS:
                raise BlockedURL(f"cloud metadata host {name!r} refused")
            if not self.allow_private and (name in _LOCAL_NAMES or name.endswith(".localhost")):
                raise BlockedURL(f"local host name {name!r} refused")
        if not self.host_allowed(name):
            raise BlockedURL(f"host {name!r} is not on image_allowed_hosts")
        if literal is not None:
            reason = self.address_refusal(literal)
            if reason is not None:
                raise BlockedURL(f"{literal} refused: {reason}")
        return literal

    def check_url(self, url: str | httpx.URL, *, resolve: bool = True, timeout: float | None = None) -> httpx.URL:
        """Parse and vet a URL; with ``resolve`` also resolve the host and vet every address.

        The fetcher passes resolve=False: its connection resolves and vets again at connect time
        and connects to exactly the vetted address.
        """
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(str(url))
        except Exception as exc:  # noqa: BLE001 - httpx.InvalidURL, TypeError, ...
            raise BlockedURL(f"malformed URL: {type(exc).__name__}") from None
        scheme = parsed.scheme.lower()
        if scheme not in self.schemes:
            raise BlockedURL(f"URL scheme {scheme or '(none)'!r} not allowed (only http, https)")
        if parsed.userinfo:
            raise BlockedURL("URLs with user info (user:password@) are refused")
        try:
            host = parsed.raw_host.decode("ascii")
        except UnicodeDecodeError:
            raise BlockedURL("host is not valid ASCII/IDNA") from None
        port = parsed.port if parsed.port is not None else (443 if scheme == "https" else 80)
        if not 0 < port < 65536:
            raise BlockedURL(f"invalid port {port}")
        literal = self.check_host(host)
        if resolve and literal is None:
            self.resolve(host, port, timeout=timeout)
        return parsed

    def resolve(self, host: str, port: int, *, timeout: float | None = None) -> list[str]:
        """Resolve ``host`` and vet every address; any refused address refuses the host.

        Returns the vetted addresses (as strings, in resolver order) to connect to.
        """
        host = host.lower().rstrip(".") or host
        literal = self.check_host(host)
        if literal is not None:
            return [str(literal)]
        infos = _getaddrinfo(host, port, timeout)
        addresses: list[str] = []
        for family, _type, _proto, _canon, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = _strip_scope(str(sockaddr[0]))
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                raise BlockedURL(f"{host} resolved to an unparseable address") from None
            reason = self.address_refusal(ip)
            if reason is not None:
                raise BlockedURL(f"{host} resolves to {ip}: {reason}")
            if str(ip) not in addresses:
                addresses.append(str(ip))
        if not addresses:
            raise FetchFailed(f"DNS lookup for {host} returned no usable address")
        return addresses


def _parse_ip_literal(host: str) -> IPAddress | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    text = _strip_scope(text.replace("%25", "%"))
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _getaddrinfo(host: str, port: int, timeout: float | None) -> list[tuple[Any, ...]]:
    """socket.getaddrinfo with a deadline (glibc's resolver cannot be interrupted otherwise)."""

    def lookup() -> list[tuple[Any, ...]]:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)

    if timeout is None:
        try:
            return lookup()
        except (socket.gaierror, UnicodeError, OSError) as exc:
            raise FetchFailed(f"DNS lookup for {host} failed: {exc}") from None
    if timeout <= 0:
        raise FetchTimeout(f"deadline passed before DNS lookup of {host}")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = lookup()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    # A daemon thread per lookup: a hung resolver cannot block the caller or interpreter exit.
    worker = threading.Thread(target=run, name="image-dns", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise FetchTimeout(f"DNS lookup for {host} timed out")
    if "error" in box:
        raise FetchFailed(f"DNS lookup for {host} failed: {box['error']}")
    return box["result"]


# ---------------------------------------------------------------------------------------------
# HTTP plumbing: a network backend that resolves + vets at connect time and enforces a deadline


class _PinnedBackend(httpcore.SyncBackend):
    """Resolves through the policy inside connect_tcp and connects to the vetted address only.

    Every blocking socket operation is clamped to the calling thread's fetch deadline.
    """

    def __init__(self, policy: UrlPolicy) -> None:
        self.policy = policy
        self._local = threading.local()

    @contextlib.contextmanager
    def deadline(self, when: float) -> Iterator[None]:
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = when
        try:
            yield
        finally:
            self._local.deadline = previous

    def clamp(self, timeout: float | None, exc: type[Exception]) -> float | None:
        when = getattr(self._local, "deadline", None)
        if when is None:
            return timeout
        remaining = when - time.monotonic()
        if remaining <= 0:
            raise exc("fetch deadline exceeded")
        return remaining if timeout is None else min(timeout, remaining)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.policy.resolve(host, port, timeout=self.clamp(timeout, httpcore.ConnectTimeout))
        failure: Exception | None = None
        for address in addresses:
            try:
                stream = super().connect_tcp(
                    address,
                    port,
                    timeout=self.clamp(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
                continue
            return _DeadlineStream(stream, self)
        assert failure is not None
        raise failure


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, backend: _PinnedBackend) -> None:
        self._inner = inner
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._backend.clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._backend.clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _build_client(backend: _PinnedBackend, workers: int) -> httpx.Client:
    limits = httpx.Limits(max_connections=max(2, 2 * workers), max_keepalive_connections=max(1, workers), keepalive_expiry=30.0)
    ssl_context = httpx.create_ssl_context(verify=True, trust_env=False)
    transport = httpx.HTTPTransport(verify=ssl_context, trust_env=False, http1=True, http2=False, retries=0, limits=limits)
    original = getattr(transport, "_pool", None)
    if not isinstance(original, httpcore.ConnectionPool):  # pragma: no cover - httpx internals changed
        raise RuntimeError("this httpx version does not expose its connection pool; cannot pin addresses")
    original.close()
    transport._pool = httpcore.ConnectionPool(  # the only way to give httpx a network backend
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        http1=True,
        http2=False,
        retries=0,
        network_backend=backend,
    )
    no_cookies = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.Client(
        transport=transport,
        trust_env=False,  # no env proxies (they would bypass the address checks), no .netrc
        follow_redirects=False,
        cookies=no_cookies,
        headers={"User-Agent": USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
    )


# ---------------------------------------------------------------------------------------------
# Loader


def describe_ref(ref: ImageRef) -> str:
    """A loggable reference: never bytes, base64 text or a URL's query string."""
    if ref.b64 is not None:
        return f"b64:{len(ref.b64)}chars"
    if ref.url is not None:
        return redact_url(ref.url)
    return f"file:{ref.path}"


class ImageLoader:
    """Loads post images (URL, base64 or local path) into DecodedImage under the settings' limits.

    Thread-safe; one shared HTTP connection pool; ``load_many`` fans out on ``fetch_workers``
    threads. Use as a context manager or call ``close()``.
    """

    def __init__(self, settings: ImageSettings, *, policy: UrlPolicy | None = None) -> None:
        self.max_bytes = int(settings.image_max_bytes)
        self.max_pixels = int(settings.image_max_pixels)
        self.timeout_s = float(settings.image_fetch_timeout_s)
        self.formats = parse_formats(settings.image_formats)
        self.max_side = int(settings.image_analysis_max_side)
        self.budget = PixelBudget(settings.image_decode_budget_pixels)
        if self.max_bytes <= 0 or self.max_pixels <= 0 or self.timeout_s <= 0:
            raise ValueError("image_max_bytes, image_max_pixels and image_fetch_timeout_s must be > 0")
        if not self.formats:
            raise ValueError("image_formats is empty")
        self.policy = policy if policy is not None else UrlPolicy.from_settings(settings)
        root = settings.image_local_root
        self.local_root: Path | None = Path(root).resolve() if root is not None else None
        configure_pillow(self.max_pixels)
        self._backend = _PinnedBackend(self.policy)
        self._client = _build_client(self._backend, settings.fetch_workers)
        self._pool = ThreadPoolExecutor(max_workers=settings.fetch_workers, thread_name_prefix="image-fetch")
        self._closed = False

    # -- public API --------------------------------------------------------------------------

    def load(self, ref: ImageRef) -> DecodedImage:
        """Fetch and decode one image; raises only ImageError subclasses."""
        stage = "fetch"
        try:
            data = self.fetch(ref)
            stage = "decode"
            return decode_image(data, max_pixels=self.max_pixels, formats=self.formats, max_bytes=self.max_bytes,
                                max_side=self.max_side, pixel_gate=self.budget.reserve)
        except ImageError as exc:
            log.info("image refused: %s: %s [%s/%s]", describe_ref(ref), exc, exc.stage, exc.code)
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the stream; logged loudly
            log.exception("unexpected error loading image %s", describe_ref(ref))
            raise ImageError(f"internal error: {type(exc).__name__}", stage=stage) from exc

    def load_many(self, refs: Iterable[ImageRef]) -> list[DecodedImage | ImageError]:
        """Load in parallel; each slot holds the image or the ImageError (the batch never fails)."""
        return list(self._pool.map(self._load_or_error, list(refs)))

    def fetch(self, ref: ImageRef) -> bytes:
        """The encoded bytes of an image reference (size-capped), or an ImageError."""
        if ref.url is not None:
            return self.fetch_url(ref.url)
        if ref.b64 is not None:
            return self.decode_b64(ref.b64)
        if ref.path is not None:
            return self.read_local(ref.path)
        raise ImageError("image reference has no url, b64 or path", stage="fetch")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def __enter__(self) -> ImageLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- sources -----------------------------------------------------------------------------

    def _load_or_error(self, ref: ImageRef) -> DecodedImage | ImageError:
        try:
            return self.load(ref)
        except ImageError as exc:
            return exc
        except Exception as exc:  # noqa: BLE001 - load() already converts; belt and braces
            return ImageError(f"internal error: {type(exc).__name__}", stage="fetch")

    def decode_b64(self, text: str) -> bytes:
        padding = 2 if text.endswith("==") else 1 if text.endswith("=") else 0
        estimate = len(text) * 3 // 4 - padding
        if estimate > self.max_bytes:
            raise ImageTooLarge(f"base64 image is about {estimate} bytes, over the limit of {self.max_bytes}")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CorruptImage("image.b64 is not valid base64", stage="fetch") from None
        if len(data) > self.max_bytes:
            raise ImageTooLarge(f"base64 image is {len(data)} bytes, over the limit of {self.max_bytes}")
        return data

    def read_local(self, path: str) -> bytes:
        root = self.local_root
        if root is None:
            raise LocalPathRefused("local image paths are disabled (image_local_root is not set)")
        if "\x00" in path:
            raise LocalPathRefused("path contains a NUL byte")
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = root / candidate
        try:
            resolved = candidate.resolve()  # follows every symlink, including in parent folders
        except (OSError, RuntimeError, ValueError) as exc:
            raise LocalPathRefused(f"cannot resolve path: {type(exc).__name__}") from None
        if not resolved.is_relative_to(root):
            raise LocalPathRefused("path lies outside image_local_root")
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(resolved, flags)
        except FileNotFoundError:
            raise FetchFailed(f"no such file under image_local_root: {resolved.relative_to(root)}") from None
        except OSError as exc:
            raise LocalPathRefused(f"cannot open file: {exc.strerror or type(exc).__name__}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise LocalPathRefused("not a regular file")
            # A folder on the way may have been swapped for a symlink since resolve(): ask the
            # kernel where the open file really is.
            proc_link = f"/proc/self/fd/{fd}"
            if os.path.exists(proc_link) and not Path(os.readlink(proc_link)).is_relative_to(root):
                raise LocalPathRefused("path lies outside image_local_root")
            if info.st_size > self.max_bytes:
                raise ImageTooLarge(f"file is {info.st_size} bytes, over the limit of {self.max_bytes}")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read(self.max_bytes + 1)
        except OSError as exc:
            raise FetchFailed(f"cannot read file: {exc.strerror or type(exc).__name__}") from None
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            raise ImageTooLarge(f"file is over the limit of {self.max_bytes} bytes")
        return data

    def fetch_url(self, url: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        current = self.policy.check_url(url, resolve=False)
        with self._backend.deadline(deadline):
            try:
                return self._follow(current, deadline)
            except ImageError:
                raise
            except (httpx.TimeoutException, httpcore.TimeoutException):
                raise FetchTimeout(f"{redact_url(url)}: no complete response within {self.timeout_s:g}s") from None
            except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, httpcore.NetworkError) as exc:
                raise FetchFailed(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from None
            except OSError as exc:
                raise FetchFailed(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from None

    def _follow(self, url: httpx.URL, deadline: float) -> bytes:
        for hop in range(self.policy.max_redirects + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchTimeout(f"{redact_url(url)}: fetch deadline exceeded")
            request = self._client.build_request("GET", url, timeout=httpx.Timeout(remaining))
            response = self._client.send(request, stream=True)
            try:
                status = response.status_code
                if status in REDIRECT_STATUSES:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchFailed(f"{redact_url(url)}: HTTP {status} without Location", status=status)
                    if hop >= self.policy.max_redirects:
                        raise FetchFailed(f"{redact_url(url)}: more than {self.policy.max_redirects} redirects", status=status)
                    try:
                        target = url.join(location)
                    except Exception:  # noqa: BLE001
                        raise BlockedURL(f"{redact_url(url)}: malformed redirect Location") from None
                    url = self.policy.check_url(target, resolve=False)  # re-checked on every hop
                    continue
                if status >= 400:
                    raise FetchFailed(f"{redact_url(url)}: HTTP {status}", status=status)
                if not 200 <= status < 300:
                    raise FetchFailed(f"{redact_url(url)}: unexpected HTTP {status}", status=status)
                return self._read_body(response, url, deadline)
            finally:
                response.close()
        raise FetchFailed(f"{redact_url(url)}: too many redirects")  # pragma: no cover

    def _read_body(self, response: httpx.Response, url: httpx.URL, deadline: float) -> bytes:
        media_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type in ("text/html", "application/xhtml+xml"):
            raise UnsupportedFormat(f"{redact_url(url)}: served {media_type}, not an image", stage="fetch")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise FetchFailed(f"{redact_url(url)}: unexpected Content-Encoding {encoding[:40]!r}")
        declared = response.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise FetchFailed(f"{redact_url(url)}: invalid Content-Length") from None
            if length > self.max_bytes:
                raise ImageTooLarge(f"{redact_url(url)}: Content-Length {length} is over the limit of {self.max_bytes}")
        body = bytearray()
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > self.max_bytes:
                raise ImageTooLarge(f"{redact_url(url)}: body is over the limit of {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchTimeout(f"{redact_url(url)}: no complete response within {self.timeout_s:g}s")
        return bytes(body)
