"""Fetch post images (URL, base64 or local path) and decode them; bad input never stops the stream.

Limits (all from settings): ``image_max_bytes`` for URL bodies (Content-Length refused early, the stream
aborted as soon as one byte too many arrives), base64 (checked from the text length before decoding) and
local files; ``image_fetch_timeout_s`` is one deadline for the whole fetch (DNS, connect, TLS, every
redirect hop and every read), not a per-read timeout. Pixel limits: see decode.py.

URLs are vetted by :class:`UrlPolicy`; the connection resolves through it and connects to the vetted
address, while TLS SNI and the Host header keep the original name. Redirects are followed by hand (at
most ``MAX_REDIRECTS``), each hop checked again. Environment proxies and cookies are ignored. Nothing
here logs image bytes, base64 text or URL query strings (signed URLs carry credentials).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import http.cookiejar
import os
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from workers.adapters.images.decode import DecodedImage, PixelBudget, configure_pillow, decode_image, parse_formats
from workers.adapters.images.errors import (
    BlockedURL,
    CorruptImage,
    FetchFailed,
    FetchTimeout,
    ImageError,
    ImageTooLarge,
    LocalPathRefused,
    UnsupportedFormat,
)
from workers.adapters.images.url_policy import UrlPolicy
from workers.common.logs import get_logger
from workers.common.redact import redact_url

if TYPE_CHECKING:  # pragma: no cover
    from schemas.posts import ImageRef
    from workers.common.settings import ImageSettings

log = get_logger("moodwatch.images")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "moodwatch-image-fetcher/0.1"


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

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        clamped = self._backend.clamp(timeout, httpcore.ConnectTimeout)
        inner = self._inner.start_tls(ssl_context, server_hostname, clamped)
        return _DeadlineStream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


def _build_client(backend: _PinnedBackend, workers: int) -> httpx.Client:
    limits = httpx.Limits(
        max_connections=max(2, 2 * workers), max_keepalive_connections=max(1, workers), keepalive_expiry=30.0
    )
    ssl_context = httpx.create_ssl_context(verify=True, trust_env=False)
    transport = httpx.HTTPTransport(
        verify=ssl_context, trust_env=False, http1=True, http2=False, retries=0, limits=limits
    )
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
            return decode_image(
                data,
                max_pixels=self.max_pixels,
                formats=self.formats,
                max_bytes=self.max_bytes,
                max_side=self.max_side,
                pixel_gate=self.budget.reserve,
            )
        except ImageError as exc:
            log.info("image refused", image=describe_ref(ref), reason=str(exc), stage=exc.stage, code=exc.code)
            raise
        except Exception as exc:  # a bug must not stop the stream; logged with its traceback
            log.exception("unexpected error loading image", image=describe_ref(ref))
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
                        message = f"{redact_url(url)}: more than {self.policy.max_redirects} redirects"
                        raise FetchFailed(message, status=status)
                    try:
                        target = url.join(location)
                    except Exception:  # noqa: BLE001 - httpx raises InvalidURL, ValueError, TypeError, ...
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
