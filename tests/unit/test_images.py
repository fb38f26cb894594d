"""workers/adapters/images: decoding under limits, SSRF policy, base64 and local-path sources.

Every image is made here with Pillow/numpy; no network (getaddrinfo is replaced by a fake).
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile
from structlog.testing import capture_logs

from schemas.posts import ImageRef
from workers.adapters.images import (
    BlockedURL,
    CorruptImage,
    DecodedImage,
    FetchFailed,
    ImageError,
    ImageLoader,
    ImageTooLarge,
    LocalPathRefused,
    TooManyPixels,
    UnsupportedFormat,
    UrlPolicy,
    configure_pillow,
    decode_image,
    parse_formats,
)
from workers.adapters.images import loader as image_loader
from workers.analyzer.settings import AnalyzerSettings as Settings
from workers.common.redact import redact_url

MAX_PIXELS = 40_000_000
FORMATS = "JPEG,PNG,GIF,WEBP,BMP,TIFF"


# ---------------------------------------------------------------------------------------------
# helpers


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def decode(data: bytes, **kwargs) -> DecodedImage:
    kwargs.setdefault("max_pixels", MAX_PIXELS)
    kwargs.setdefault("formats", FORMATS)
    return decode_image(data, **kwargs)


def assert_rgb(result: DecodedImage, width: int, height: int) -> None:
    assert isinstance(result, DecodedImage)
    assert result.rgb.dtype == np.uint8
    assert result.rgb.shape == (height, width, 3)
    assert (result.width, result.height) == (width, height)
    assert result.rgb.flags.c_contiguous


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, *, full_stream: bool) -> bytes:
    """A 1-bit grayscale PNG of width x height, all zero; the whole IDAT stream or just its start.

    The full stream is built from one compressed block of rows repeated (each block ends with a
    full flush, so it has no back-references), which takes milliseconds instead of compressing
    ~100 MB of zeros.
    """
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
    row = b"\x00" * (1 + (width + 7) // 8)
    rows = height if full_stream else 16
    per_block = min(rows, 1000)
    block = row * per_block
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    tail_rows = rows % per_block
    tail = b""
    if tail_rows:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
        tail = deflater.compress(row * tail_rows) + deflater.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(rows // per_block):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * tail_rows, checksum)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    stream = b"\x78\xda" + segment * (rows // per_block) + tail + final + struct.pack(">I", checksum)
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def test_png_bomb_helper_builds_a_valid_png():
    data = png_bomb(2_500, 1_700, full_stream=True)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (2_500, 1_700) and image.mode == "1"
    assert np.asarray(image).sum() == 0


# ---------------------------------------------------------------------------------------------
# decode: the good cases


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("JPEG", {"quality": 90}), ("PNG", {}), ("GIF", {}), ("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})],
)
def test_decodes_common_formats(fmt, params):
    source = Image.new("RGB", (48, 32), (200, 30, 40))
    data = encode(source, fmt, **params)
    result = decode(data)
    assert_rgb(result, 48, 32)
    assert result.format == fmt
    assert result.source_bytes == len(data)
    assert np.abs(result.rgb[16, 24].astype(int) - (200, 30, 40)).max() <= 12


def test_format_aliases_and_order():
    assert parse_formats(" jpg, PNG ,png,tif,, webp") == ("JPEG", "PNG", "TIFF", "WEBP")


def test_grayscale_and_bilevel_become_rgb():
    gray = decode(encode(Image.new("L", (10, 6), 77), "PNG"))
    assert_rgb(gray, 10, 6)
    assert (gray.rgb == 77).all()
    bilevel = decode(encode(Image.new("1", (9, 5), 1), "PNG"))
    assert_rgb(bilevel, 9, 5)
    assert (bilevel.rgb == 255).all()


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    result = decode(data)
    assert_rgb(result, 16, 16)
    assert np.abs(result.rgb[8, 8].astype(int) - (255, 0, 0)).max() <= 10


def test_16_bit_grayscale_png_is_scaled_not_clipped():
    values = np.zeros((4, 6), dtype=np.uint16)
    values[:, :2] = 65535
    values[:, 2:4] = 32768
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    result = decode(data)
    assert_rgb(result, 6, 4)
    assert (result.rgb[:, :2] == 255).all()
    assert (result.rgb[:, 2:4] == 128).all()
    assert (result.rgb[:, 4:] == 0).all()


def test_16_bit_rgb_png():
    # Pillow only writes 8-bit RGB PNGs; build a 16-bit one by hand (colour type 2, depth 16).
    width, height = 3, 2
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    pixel = struct.pack(">HHH", 65535, 0, 32896)
    raw = b"".join(b"\x00" + pixel * width for _ in range(height))
    data = b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")
    result = decode(data)
    assert_rgb(result, width, height)
    assert tuple(result.rgb[0, 0]) == (255, 0, 128)


def test_rgba_and_la_are_composited_over_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (0, 0, 4, 8))
    result = decode(encode(rgba, "PNG"))
    assert_rgb(result, 8, 8)
    assert (result.rgb[:, :4] == 0).all()  # opaque black stays black
    assert (result.rgb[:, 4:] == 255).all()  # transparent -> white
    half = decode(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert abs(int(half.rgb[0, 0, 0]) - 127) <= 1
    la = decode(encode(Image.new("LA", (5, 3), (0, 0)), "PNG"))
    assert_rgb(la, 5, 3)
    assert (la.rgb == 255).all()


def test_palette_png_with_and_without_transparency():
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    plain = decode(encode(palette, "PNG"))
    assert_rgb(plain, 6, 4)
    assert tuple(plain.rgb[0, 0]) == (0, 200, 0)
    transparent = decode(encode(palette, "PNG", transparency=1))
    assert (transparent.rgb == 255).all()


def test_animated_gif_and_webp_and_apng_give_the_first_frame():
    frames = [Image.new("RGB", (12, 10), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    animations = (
        ("GIF", {"duration": 50, "loop": 0}),
        ("WEBP", {"lossless": True, "duration": 50}),
        ("PNG", {"duration": 50}),
    )
    for fmt, params in animations:
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3, fmt
        result = decode(data)
        assert_rgb(result, 12, 10)
        assert np.abs(result.rgb[5, 5].astype(int) - (255, 0, 0)).max() <= 8, fmt


def test_exif_orientation_6_rotates_clockwise():
    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 40, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    result = decode(data)
    assert_rgb(result, 40, 80)  # rotated: now tall
    top = result.rgb[20, 20].astype(int)
    bottom = result.rgb[60, 20].astype(int)
    assert top[0] > 200 and top[2] < 60  # the stored left (red) is now at the top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_broken_exif_does_not_fail_the_image():
    data = encode(Image.new("RGB", (8, 8), (1, 2, 3)), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert_rgb(decode(data), 8, 8)


# ---------------------------------------------------------------------------------------------
# decode: the bad cases


def test_truncated_jpeg_is_corrupt():
    data = encode(noise(256, 256), "JPEG", quality=90)
    for cut in (len(data) // 2, len(data) - 200, 300, 20):
        with pytest.raises(CorruptImage) as info:
            decode(data[:cut])
        assert info.value.stage == "decode"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_is_corrupt():
    data = encode(noise(128, 128), "PNG")
    with pytest.raises(CorruptImage):
        decode(data[: len(data) * 2 // 3])


def test_load_truncated_images_is_forced_back_off(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = encode(noise(128, 128), "JPEG")
    with pytest.raises(CorruptImage):
        decode(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_are_refused(seed):
    data = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises((CorruptImage, UnsupportedFormat)):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>',
        b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999"></svg>',
        "\ufeff<svg/>".encode("utf-8"),
        "<svg/>".encode("utf-16"),
        b"\n\n  <!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
        b"<html><head><title>404 Not Found</title></head></html>",
        b'{"error": "not found"}',
        b"",
    ],
    ids=["svg-xml", "svg-huge", "svg-bom", "svg-utf16", "html", "html-404", "json", "empty"],
)
def test_markup_text_and_empty_are_refused(data):
    expected = CorruptImage if not data else UnsupportedFormat
    with pytest.raises(expected):
        decode(data)


def test_formats_outside_the_allowed_list_are_refused():
    gif = encode(Image.new("RGB", (4, 4)), "GIF")
    with pytest.raises(UnsupportedFormat, match="GIF"):
        decode(gif, formats="JPEG,PNG")
    ico = encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(UnsupportedFormat, match="ICO"):
        decode(ico)
    ppm = encode(Image.new("RGB", (4, 4)), "PPM")
    with pytest.raises(UnsupportedFormat):
        decode(ppm)
    with pytest.raises(UnsupportedFormat, match="PDF"):
        decode(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj <<>> endobj")
    with pytest.raises(UnsupportedFormat, match="GZIP"):
        decode(zlib.compress(b"<svg/>")[:0] + b"\x1f\x8b\x08\x00" + b"\x00" * 20)


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    calls = []
    original = ImageFile.ImageFile.load

    def spy(self):
        calls.append(self.size)
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    data = encode(Image.new("RGB", (300, 200)), "PNG")
    with pytest.raises(TooManyPixels, match="300x200"):
        decode(data, max_pixels=300 * 200 - 1)
    assert calls == []  # refused from the header alone
    assert_rgb(decode(data, max_pixels=300 * 200), 300, 200)
    assert calls and set(calls) == {(300, 200)}


def test_decompression_bomb_png_is_refused_fast_without_decoding(monkeypatch):
    data = png_bomb(30_000, 30_000, full_stream=True)  # 900 Mpx, 1-bit: ~112 MB raw, ~110 kB on disk
    assert len(data) < 200_000
    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1))
    start = time.perf_counter()
    with pytest.raises(TooManyPixels) as info:
        decode(data, max_pixels=MAX_PIXELS)
    assert time.perf_counter() - start < 1.0
    assert loads == []
    assert info.value.stage == "decode"
    # between the limit and Pillow's own 2x error threshold: our header check still refuses
    with pytest.raises(TooManyPixels):
        decode(png_bomb(7_000, 7_000, full_stream=False), max_pixels=MAX_PIXELS)


def test_pillow_bomb_guard_is_an_error_not_a_warning():
    original = Image.MAX_IMAGE_PIXELS
    configure_pillow(MAX_PIXELS)
    try:
        assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
        # decode_image with a looser per-call limit still hits Pillow's own guard, as an error.
        with pytest.raises(TooManyPixels):
            decode(png_bomb(7_000, 7_000, full_stream=False), max_pixels=10**9)
    finally:
        Image.MAX_IMAGE_PIXELS = original


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "JPEG", "PNG", "TIFF"])
def test_huge_declared_dimensions(fmt):
    """Headers declaring 65000 x 65000 (4.2 Gpx) with almost no data behind them."""
    data = bytearray(encode(Image.new("RGB" if fmt != "GIF" else "P", (16, 16)), fmt))
    if fmt == "GIF":
        data[6:10] = struct.pack("<HH", 65000, 65000)
    elif fmt == "BMP":
        data[18:26] = struct.pack("<ii", 65000, 65000)
    elif fmt == "PNG":
        data[16:24] = struct.pack(">II", 65000, 65000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    elif fmt == "JPEG":
        sof = bytes(data).index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    elif fmt == "TIFF":
        data = bytearray(encode(Image.new("RGB", (16, 16)), "TIFF"))
        image = Image.open(io.BytesIO(bytes(data)))
        assert image.size == (16, 16)
        # rewrite ImageWidth/ImageLength (tags 256/257) in the first IFD
        ifd = struct.unpack("<I", data[4:8])[0]
        count = struct.unpack("<H", data[ifd : ifd + 2])[0]
        for i in range(count):
            entry = ifd + 2 + 12 * i
            tag, kind = struct.unpack("<HH", data[entry : entry + 4])
            if tag in (256, 257):
                packed = struct.pack("<H", 65000) if kind == 3 else struct.pack("<I", 65000)
                data[entry + 8 : entry + 8 + len(packed)] = packed
    start = time.perf_counter()
    with pytest.raises((TooManyPixels, CorruptImage)) as info:
        decode(bytes(data))
    assert time.perf_counter() - start < 1.0
    if fmt in ("GIF", "BMP", "PNG", "JPEG"):
        assert isinstance(info.value, TooManyPixels)


def test_oversize_bytes():
    data = encode(noise(64, 64), "PNG")
    with pytest.raises(ImageTooLarge):
        decode(data, max_bytes=len(data) - 1)
    assert_rgb(decode(data, max_bytes=len(data)), 64, 64)


def test_every_error_is_an_image_error_with_a_stage():
    errors = (ImageTooLarge, TooManyPixels, UnsupportedFormat, CorruptImage, FetchFailed, BlockedURL, LocalPathRefused)
    for cls in errors:
        assert issubclass(cls, ImageError)
        assert cls("x").stage in ("fetch", "decode")
        assert cls.code != ImageError.code
    assert FetchFailed("x").stage == "fetch"
    assert CorruptImage("x", stage="fetch").stage == "fetch"
    assert len(str(CorruptImage("y" * 5000))) <= 300


# ---------------------------------------------------------------------------------------------
# URL policy


class FakeDNS:
    def __init__(self, table: dict[str, list[str]]):
        self.table = table
        self.calls: list[str] = []

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in self.table[host]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if fam == socket.AF_INET6 else (address, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sockaddr))
        return out


@pytest.fixture
def dns(monkeypatch):
    fake = FakeDNS(
        {
            "images.example.com": ["93.184.216.34"],
            "a.example.com": ["93.184.216.34"],
            "example.com": ["93.184.216.34"],
            "example.com.evil.com": ["93.184.216.34"],
            "cdn.other.org": ["2606:2800:220:1::1"],
            "rebind.example.com": ["93.184.216.34"],
            "inside.example.com": ["10.1.2.3"],
            "mixed.example.com": ["93.184.216.34", "127.0.0.1"],
            "meta.example.com": ["169.254.169.254"],
            "v6loop.example.com": ["::1"],
            "mapped.example.com": ["::ffff:10.0.0.1"],
            "localhost": ["127.0.0.1"],
        }
    )
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.jpg",
        "http://127.0.0.1:8080/a.jpg",
        "http://10.0.0.5/a.jpg",
        "http://10.255.255.255/",
        "http://172.16.0.1/a.jpg",
        "http://172.31.255.1/",
        "http://192.168.1.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/a.jpg",
        "http://[fd00::1]/a.jpg",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://[::ffff:169.254.169.254]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/a.jpg",
        "http://[::]/",
        "http://100.100.100.200/latest/meta-data/",
        "http://100.64.0.1/",
        "http://168.63.129.16/machine",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://[ff02::1]/",
        "http://[2002:7f00:1::]/",  # 6to4 around 127.0.0.1
        "http://[64:ff9b::a00:1]/",  # NAT64 around 10.0.0.1
        "http://198.18.0.1/",
        "http://localhost/a.jpg",
        "http://LOCALHOST./a.jpg",
        "http://foo.localhost/a.jpg",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://2130706433/",  # 127.0.0.1 as one number
        "http://0x7f.1/",
        "http://127.1/",
        "http://0177.0.0.1/",
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "gopher://example.com:70/_GET",
        "dict://example.com:11211/stat",
        "data:image/png;base64,AAAA",
        "javascript:alert(1)",
        "//example.com/a.jpg",
        "http://user:pass@example.com/a.jpg",
        "http://images.example.com@127.0.0.1/a.jpg",
        "http:///a.jpg",
        "not a url",
    ],
)
def test_policy_refuses(url, dns):
    with pytest.raises(BlockedURL) as info:
        UrlPolicy("*").check_url(url)
    assert info.value.stage == "fetch"


@pytest.mark.parametrize(
    "host", ["inside.example.com", "mixed.example.com", "meta.example.com", "v6loop.example.com", "mapped.example.com"]
)
def test_policy_refuses_names_resolving_to_forbidden_addresses(host, dns):
    with pytest.raises(BlockedURL, match="resolves to"):
        UrlPolicy("*").check_url(f"https://{host}/x.png")


def test_policy_accepts_public_hosts(dns):
    policy = UrlPolicy("*")
    assert str(policy.check_url("https://images.example.com/a.jpg?sig=1")) == "https://images.example.com/a.jpg?sig=1"
    policy.check_url("http://cdn.other.org:8080/a.png")
    policy.check_url("http://93.184.216.34/a.png")
    policy.check_url("http://[2606:2800:220:1::1]/a.png")
    assert policy.resolve("images.example.com", 443) == ["93.184.216.34"]


def test_unknown_name_is_a_fetch_failure(dns):
    with pytest.raises(FetchFailed, match="DNS"):
        UrlPolicy("*").check_url("http://nowhere.invalid/a.jpg")
    with pytest.raises(FetchFailed, match="DNS"):
        UrlPolicy("*").check_url("http://nowhere.invalid/a.jpg", timeout=2.0)


def test_allowlist_patterns(dns):
    policy = UrlPolicy("*.example.com, cdn.other.org ,93.184.216.34")
    assert policy.host_allowed("a.example.com")
    assert policy.host_allowed("deep.a.example.com")
    assert policy.host_allowed("A.Example.COM.")
    assert not policy.host_allowed("example.com")  # the wildcard does not cover the apex
    assert not policy.host_allowed("example.com.evil.com")
    assert not policy.host_allowed("evilexample.com")
    assert policy.host_allowed("cdn.other.org")
    assert not policy.host_allowed("x.cdn.other.org")
    assert policy.host_allowed("93.184.216.34")
    policy.check_url("https://a.example.com/x.jpg")
    for url in ("https://example.com.evil.com/x.jpg", "https://example.com/x.jpg", "http://93.184.216.35/x.jpg"):
        with pytest.raises(BlockedURL, match="not on image_allowed_hosts"):
            policy.check_url(url)
    nothing = UrlPolicy("")
    with pytest.raises(BlockedURL):
        nothing.check_url("https://images.example.com/x.jpg")
    with pytest.raises(ValueError):
        UrlPolicy("exa*mple.com")
    with pytest.raises(ValueError):
        UrlPolicy("*.10.0.0.1")


def test_allowlist_does_not_override_address_checks(dns):
    policy = UrlPolicy("127.0.0.1,inside.example.com,localhost")
    for url in ("http://127.0.0.1/", "http://inside.example.com/", "http://localhost/"):
        with pytest.raises(BlockedURL):
            policy.check_url(url)


def test_allow_private_is_for_tests_but_never_metadata(dns):
    policy = UrlPolicy("*", allow_private=True)
    policy.check_url("http://127.0.0.1:8000/a.jpg")
    policy.check_url("http://[::1]/a.jpg")
    policy.check_url("http://localhost/a.jpg")
    policy.check_url("http://inside.example.com/a.jpg")
    for url in (
        "http://169.254.169.254/",
        "http://[fd00:ec2::254]/",
        "http://[::ffff:169.254.169.254]/",
        "http://meta.example.com/",
    ):
        with pytest.raises(BlockedURL, match="metadata"):
            policy.check_url(url)


def test_policy_from_settings():
    policy = UrlPolicy.from_settings(Settings(image_allowed_hosts="*.example.com", image_allow_private_addresses=True))
    assert policy.allow_private
    assert policy.host_allowed("a.example.com") and not policy.host_allowed("b.example.org")


def test_redact_url_drops_secrets():
    text = redact_url("https://user:pw@img.example.com:8443/a/b.jpg?X-Amz-Signature=SECRET#frag")
    assert "SECRET" not in text and "pw" not in text and "frag" not in text
    assert text == "https://img.example.com:8443/a/b.jpg"


# ---------------------------------------------------------------------------------------------
# ImageLoader: connection pinning (no traffic leaves: refused before connect), base64, local paths


def refuse_connect(log: list):
    def connect(address, *args, **kwargs):
        log.append(address)
        raise ConnectionRefusedError("test: no connections")

    return connect


def make_loader(tmp_path: Path | None = None, **overrides) -> ImageLoader:
    values = {"image_local_root": tmp_path, "fetch_workers": 2, "image_fetch_timeout_s": 2.0}
    values.update(overrides)
    return ImageLoader(Settings(**values))


def test_dns_rebind_is_caught_at_connect_time(dns, monkeypatch):
    policy = UrlPolicy("*")
    policy.check_url("http://rebind.example.com/a.jpg")  # first answer: public
    dns.table["rebind.example.com"] = ["127.0.0.1"]  # then the attacker's DNS flips
    connects = []
    monkeypatch.setattr(socket, "create_connection", refuse_connect(connects))
    with make_loader() as loader:
        with pytest.raises(BlockedURL, match="127.0.0.1"):
            loader.load(ImageRef(url="http://rebind.example.com/a.jpg"))
    assert connects == []


def test_loader_refuses_blocked_urls_without_connecting(dns, monkeypatch):
    connects = []
    monkeypatch.setattr(socket, "create_connection", refuse_connect(connects))
    with make_loader() as loader:
        for url in ("http://127.0.0.1/", "http://inside.example.com/", "file:///etc/passwd", "gopher://example.com/"):
            with pytest.raises(BlockedURL):
                loader.load(ImageRef(url=url))
    assert connects == []


def test_loader_connects_to_the_vetted_address(dns, monkeypatch):
    seen = []

    def fake_connect(address, timeout=None, source_address=None):
        seen.append((address, timeout))
        raise ConnectionRefusedError("refused")

    monkeypatch.setattr(socket, "create_connection", fake_connect)
    with make_loader(image_fetch_timeout_s=3.0) as loader:
        with pytest.raises(FetchFailed):
            loader.load(ImageRef(url="https://images.example.com/a.jpg"))
    assert [address for address, _ in seen] == [("93.184.216.34", 443)]
    assert 0 < seen[0][1] <= 3.0


def test_b64_images():
    data = encode(Image.new("RGB", (20, 10), (9, 99, 199)), "PNG")
    with make_loader() as loader:
        result = loader.load(ImageRef(b64=base64.b64encode(data).decode()))
        assert_rgb(result, 20, 10)
        assert result.source_bytes == len(data)
    with make_loader(image_max_bytes=len(data) - 1) as small:
        with pytest.raises(ImageTooLarge) as info:
            small.load(ImageRef(b64=base64.b64encode(data).decode()))
        assert info.value.stage == "fetch"


def test_b64_size_is_checked_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(image_loader.base64, "b64decode", lambda *a, **k: decoded.append(1) or b"")
    with make_loader(image_max_bytes=1000) as loader:
        with pytest.raises(ImageTooLarge):
            loader.decode_b64("A" * 1400)
    assert decoded == []


def test_local_paths_refused_without_root():
    with make_loader(None) as loader:
        with pytest.raises(LocalPathRefused, match="image_local_root"):
            loader.load(ImageRef(path="/etc/hostname"))


def test_local_paths_under_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "sub").mkdir()
    data = encode(Image.new("RGB", (7, 5), (1, 2, 3)), "PNG")
    (root / "sub" / "ok.png").write_bytes(data)
    outside = tmp_path / "secret.png"
    outside.write_bytes(data)
    (root / "escape.png").symlink_to(outside)
    (root / "escape_dir").symlink_to(tmp_path)
    (root / "inside_link.png").symlink_to(root / "sub" / "ok.png")
    (root / "big.png").write_bytes(b"\x89PNG" + b"\x00" * 5000)
    with make_loader(root, image_max_bytes=4000) as loader:
        assert_rgb(loader.load(ImageRef(path=str(root / "sub" / "ok.png"))), 7, 5)
        assert_rgb(loader.load(ImageRef(path="sub/ok.png")), 7, 5)
        assert_rgb(loader.load(ImageRef(path="inside_link.png")), 7, 5)
        escapes = (
            "../secret.png",
            str(outside),
            "escape.png",
            "escape_dir/secret.png",
            "sub/../../secret.png",
            "/etc/passwd",
        )
        for bad in escapes:
            with pytest.raises(LocalPathRefused, match="outside"):
                loader.load(ImageRef(path=bad))
        with pytest.raises(LocalPathRefused, match="regular file"):
            loader.load(ImageRef(path="sub"))
        with pytest.raises(FetchFailed, match="no such file"):
            loader.load(ImageRef(path="missing.png"))
        with pytest.raises(ImageTooLarge):
            loader.load(ImageRef(path="big.png"))


def test_local_fifo_does_not_block(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe.png")
    with make_loader(tmp_path) as loader:
        with pytest.raises(LocalPathRefused, match="regular file"):
            loader.load(ImageRef(path="pipe.png"))


def test_load_many_never_fails_the_batch(tmp_path, dns):
    good = base64.b64encode(encode(Image.new("RGB", (4, 3)), "JPEG")).decode()
    refs = [
        ImageRef(b64=good),
        ImageRef(b64=base64.b64encode(b"<svg/>").decode()),
        ImageRef(url="http://127.0.0.1/x.jpg"),
        ImageRef(path="nope.png"),
        ImageRef(b64=good),
    ]
    with make_loader(None) as loader:
        results = loader.load_many(refs)
    assert [type(r).__name__ for r in results] == [
        "DecodedImage",
        "UnsupportedFormat",
        "BlockedURL",
        "LocalPathRefused",
        "DecodedImage",
    ]


def test_unexpected_bug_becomes_an_image_error(monkeypatch):
    def boom(*args, **kwargs):
        raise KeyError("bug")

    monkeypatch.setattr(image_loader, "decode_image", boom)
    good = base64.b64encode(encode(Image.new("RGB", (4, 3)), "PNG")).decode()
    with make_loader() as loader:
        with pytest.raises(ImageError, match="internal error") as info:
            loader.load(ImageRef(b64=good))
        assert info.value.stage == "decode"
        assert isinstance(loader.load_many([ImageRef(b64=good)])[0], ImageError)


def test_logs_never_contain_image_bytes_or_base64():
    secret = base64.b64encode(b"<svg>" + b"S3CRET" * 50 + b"</svg>").decode()
    with capture_logs() as events:
        with make_loader() as loader:
            loader.load_many([ImageRef(b64=secret), ImageRef(url="https://u:pw@example.com/a.jpg?token=S3CRET")])
    assert [e["event"] for e in events] == ["image refused", "image refused"]
    text = repr(events)
    assert secret[:40] not in text and "S3CRET" not in text and "pw@" not in text
    assert "b64:" in text
