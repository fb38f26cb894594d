"""ImageLoader against a real HTTP server on 127.0.0.1 (nothing leaves the loopback interface).

`cdn.test` plays a public CDN: a UrlPolicy subclass "resolves" it to the loopback server, so the
redirect-to-loopback refusal can be shown with private addresses NOT allowed.
"""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from schemas.posts import ImageRef
from workers.adapters.images import (
    BlockedURL,
    DecodedImage,
    FetchFailed,
    FetchTimeout,
    ImageLoader,
    ImageTooLarge,
    UnsupportedFormat,
    UrlPolicy,
)
from workers.analyzer.settings import AnalyzerSettings as Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PUBLIC_NAME = "cdn.test"
MAX_BYTES = 200_000
TIMEOUT_S = 1.0


def _png(width: int = 32, height: int = 24) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
HTML = b"<!DOCTYPE html><html><body><h1>Not an image</h1></body></html>"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "image/png", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def _write_until(self, total: int, chunked: bool) -> None:
        block = b"\x00" * 65536
        sent = 0
        try:
            while sent < total and not self.server.stopping.is_set():
                if chunked:
                    self.wfile.write(b"%x\r\n" % len(block) + block + b"\r\n")
                else:
                    self.wfile.write(block)
                sent += len(block)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client hung up, as it should
        self.close_connection = True

    def do_GET(self) -> None:
        path = self.path
        self.server.log.append((path, self.headers.get("Host"), self.client_address[1]))
        port = self.server.server_address[1]
        if path in ("/img.png", "/again.png"):
            self._send(200, PNG)
        elif path == "/octet":
            self._send(200, PNG, content_type="application/octet-stream")
        elif path == "/html-as-jpeg":
            self._send(200, HTML, content_type="image/jpeg")
        elif path == "/html":
            self._send(200, HTML, content_type="text/html; charset=utf-8")
        elif path == "/gzip":
            self._send(200, PNG, Content_Encoding="gzip")
        elif path == "/404":
            self._send(404, b"not found", content_type="text/plain")
        elif path == "/500":
            self._send(500, b"boom", content_type="text/plain")
        elif path.startswith("/r/"):
            remaining = int(path[3:])
            location = f"/r/{remaining - 1}" if remaining > 0 else f"http://127.0.0.1:{port}/img.png"
            self._send(302, b"", Location=location)
        elif path == "/loop":
            self._send(301, b"", Location="/loop")
        elif path == "/to-file":
            self._send(302, b"", Location="file:///etc/passwd")
        elif path == "/to-metadata":
            self._send(302, b"", Location="http://169.254.169.254/latest/meta-data/")
        elif path == "/to-ftp":
            self._send(307, b"", Location="ftp://127.0.0.1/x.png")
        elif path == "/slow":  # valid headers, then one byte every 50 ms
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for i in range(400):
                    if self.server.stopping.is_set():
                        break
                    self.wfile.write(PNG[i : i + 1] or b"\x00")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/stall":  # never answers
            self.server.stopping.wait(20)
            self.close_connection = True
        elif path == "/big-cl":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
            self._write_until(1024 * 1024, chunked=False)
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._write_until(20 * 1024 * 1024, chunked=True)
        elif path == "/big-close":  # no length at all: the body ends when the connection closes
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self._write_until(20 * 1024 * 1024, chunked=False)
        else:
            self._send(404, b"", content_type="text/plain")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.log: list[tuple[str, str | None, int]] = []
        self.stopping = threading.Event()

    def handle_error(self, request, client_address) -> None:
        # The fetcher hangs up on purpose (size limits, deadlines); the handler's last flush then meets a
        # closed socket, and socketserver would print that to stderr in the middle of the test run.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [entry[0] for entry in self.log]


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stopping.set()
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture(autouse=True)
def _clear_log(server):
    server.log.clear()


class PretendPublic(UrlPolicy):
    """Treats `cdn.test` as a public host that resolves to the loopback test server."""

    def resolve(self, host, port, *, timeout=None):
        if host == PUBLIC_NAME:
            return ["127.0.0.1"]
        return super().resolve(host, port, timeout=timeout)


def make_settings(**overrides) -> Settings:
    values = {
        "image_max_bytes": MAX_BYTES,
        "image_fetch_timeout_s": TIMEOUT_S,
        "image_allow_private_addresses": True,
        "fetch_workers": 4,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def loader():
    with ImageLoader(make_settings()) as instance:
        yield instance


@pytest.fixture
def public_loader():
    """Private addresses NOT allowed; only cdn.test (pretend-public) reaches the server."""
    settings = make_settings(image_allow_private_addresses=False)
    with ImageLoader(settings, policy=PretendPublic.from_settings(settings)) as instance:
        yield instance


def load(loader: ImageLoader, url: str) -> DecodedImage:
    return loader.load(ImageRef(url=url))


# ---------------------------------------------------------------------------------------------


def test_image_is_fetched_and_decoded(server, loader):
    result = load(loader, server.url("/img.png"))
    assert result.rgb.shape == (24, 32, 3)
    assert result.format == "PNG" and result.source_bytes == len(PNG)
    octet = load(loader, server.url("/octet"))  # octet-stream is fine: the decoder decides
    assert octet.rgb.shape == (24, 32, 3)


def test_connections_are_pooled(server, loader):
    for _ in range(4):
        load(loader, server.url("/again.png"))
    ports = {client_port for path, _host, client_port in server.log if path == "/again.png"}
    assert len(server.log) == 4 and len(ports) == 1


def test_pinned_connection_keeps_the_host_name(server, public_loader):
    result = load(public_loader, server.url("/img.png", host=PUBLIC_NAME))
    assert result.width == 32
    assert server.log == [("/img.png", f"{PUBLIC_NAME}:{server.port}", server.log[0][2])]


def test_slow_drip_hits_the_total_deadline(server, loader):
    start = time.monotonic()
    with pytest.raises(FetchTimeout) as info:
        load(loader, server.url("/slow"))
    elapsed = time.monotonic() - start
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + 0.75, elapsed
    assert info.value.stage == "fetch"


def test_stalled_server_hits_the_total_deadline(server, loader):
    start = time.monotonic()
    with pytest.raises(FetchTimeout):
        load(loader, server.url("/stall"))
    assert time.monotonic() - start < TIMEOUT_S + 0.75


@pytest.mark.parametrize("path", ["/big-cl", "/big-chunked", "/big-close"])
def test_oversize_bodies_are_cut_off(server, loader, path):
    start = time.monotonic()
    with pytest.raises(ImageTooLarge) as info:
        load(loader, server.url(path))
    assert time.monotonic() - start < TIMEOUT_S
    assert info.value.stage == "fetch"
    if path == "/big-cl":
        assert "Content-Length" in str(info.value)


def test_redirect_to_loopback_is_refused_when_private_addresses_are_not_allowed(server, public_loader):
    with pytest.raises(BlockedURL, match="127.0.0.1") as info:
        load(public_loader, server.url("/r/1", host=PUBLIC_NAME))
    assert info.value.stage == "fetch"
    # /r/1 -> /r/0 (same pretend-public host) -> http://127.0.0.1/img.png: refused before connecting
    assert server.paths() == ["/r/1", "/r/0"]


def test_loopback_is_refused_directly_when_private_addresses_are_not_allowed(server, public_loader):
    with pytest.raises(BlockedURL):
        load(public_loader, server.url("/img.png"))
    with pytest.raises(BlockedURL):
        load(public_loader, server.url("/img.png", host="localhost"))
    assert server.log == []


def test_redirect_chain_is_followed_when_private_addresses_are_allowed(server, loader):
    result = load(loader, server.url("/r/2"))  # three redirects: the maximum
    assert result.rgb.shape == (24, 32, 3)
    assert server.paths() == ["/r/2", "/r/1", "/r/0", "/img.png"]


def test_too_many_redirects(server, loader):
    with pytest.raises(FetchFailed, match="redirects"):
        load(loader, server.url("/r/3"))
    with pytest.raises(FetchFailed, match="redirects"):
        load(loader, server.url("/loop"))
    assert server.paths().count("/loop") == 4


@pytest.mark.parametrize("path", ["/to-file", "/to-metadata", "/to-ftp"])
def test_redirects_to_forbidden_targets_are_refused_even_in_test_mode(server, loader, path):
    with pytest.raises(BlockedURL):
        load(loader, server.url(path))
    assert server.paths() == [path]


def test_html_served_as_jpeg_is_refused_by_the_decoder(server, loader):
    with pytest.raises(UnsupportedFormat) as info:
        load(loader, server.url("/html-as-jpeg"))
    assert info.value.stage == "decode"


def test_html_content_type_is_refused_before_reading(server, loader):
    with pytest.raises(UnsupportedFormat) as info:
        load(loader, server.url("/html"))
    assert info.value.stage == "fetch"


def test_unrequested_content_encoding_is_refused(server, loader):
    with pytest.raises(FetchFailed, match="Content-Encoding"):
        load(loader, server.url("/gzip"))


@pytest.mark.parametrize("status", [404, 500])
def test_http_errors(server, loader, status):
    with pytest.raises(FetchFailed) as info:
        load(loader, server.url(f"/{status}"))
    assert info.value.status == status
    assert not isinstance(info.value, FetchTimeout)


def test_connection_refused(loader):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    start = time.monotonic()
    with pytest.raises(FetchFailed) as info:
        load(loader, f"http://127.0.0.1:{port}/img.png")
    assert not isinstance(info.value, FetchTimeout)
    assert time.monotonic() - start < TIMEOUT_S


def test_environment_proxies_are_ignored(server, monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # discard port: a proxy that is not there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with ImageLoader(make_settings()) as fresh:
        assert load(fresh, server.url("/img.png")).width == 32


def test_load_many_mixes_results_and_errors(server, loader):
    refs = [
        ImageRef(url=server.url("/img.png")),
        ImageRef(url=server.url("/404")),
        ImageRef(url=server.url("/slow")),
        ImageRef(url=server.url("/big-chunked")),
        ImageRef(url=server.url("/html-as-jpeg")),
        ImageRef(url=server.url("/to-metadata")),
        ImageRef(url=server.url("/octet")),
    ]
    start = time.monotonic()
    results = loader.load_many(refs)
    assert time.monotonic() - start < 2 * TIMEOUT_S + 1
    assert [type(r).__name__ for r in results] == [
        "DecodedImage",
        "FetchFailed",
        "FetchTimeout",
        "ImageTooLarge",
        "UnsupportedFormat",
        "BlockedURL",
        "DecodedImage",
    ]
