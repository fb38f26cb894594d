"""Fuzzing decode_image: any input decodes to a valid H x W x 3 uint8 array or raises ImageError.

Never another exception type and never a hang (hypothesis deadline per example, pytest-timeout per
test). Seeds are small valid images of every allowed format, built here; mutations are bit flips,
byte writes, truncations, insertions, deletions and header edits (dimension fields set huge).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from workers.adapters.images import DecodedImage, ImageError, decode_image

MAX_PIXELS = 1 << 20  # small, so a mutated header can never ask for much memory
MAX_BYTES = 1 << 20
FORMATS = "JPEG,PNG,GIF,WEBP,BMP,TIFF"

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.PngImagePlugin"),
]

FUZZ = settings(
    max_examples=200,
    deadline=2000,  # ms per example; generous for a 2-core machine shared with others
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(7)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")
    rgba = Image.fromarray(rng.integers(0, 256, (24, 32, 4), dtype=np.uint8), "RGBA")
    frames = [Image.new("RGB", (20, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6
    png16 = Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16))
    seeds = {
        "jpeg": _encode(rgb, "JPEG", quality=80),
        "jpeg-progressive": _encode(rgb, "JPEG", quality=80, progressive=True),
        "jpeg-exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "png": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-16bit": _encode(png16, "PNG"),
        "png-palette": _encode(rgb.convert("P"), "PNG", transparency=0),
        "apng": _encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=40),
        "gif": _encode(rgb.convert("P"), "GIF"),
        "gif-animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        "webp-lossy": _encode(rgb, "WEBP", quality=60),
        "webp-lossless": _encode(rgba, "WEBP", lossless=True),
        "webp-animated": _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40),
        "bmp": _encode(rgb, "BMP"),
        "bmp-rle": _encode(rgb.convert("P"), "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
    }
    return seeds


SEEDS = _seeds()


def check(data: bytes) -> None:
    """The property: an ImageError, or a well-formed RGB array within the limits."""
    try:
        result = decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS, max_bytes=MAX_BYTES)
    except ImageError as exc:
        assert exc.stage in ("fetch", "decode")
        assert str(exc)
        return
    assert isinstance(result, DecodedImage)
    array = result.rgb
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.ndim == 3 and array.shape[2] == 3
    assert array.shape[:2] == (result.height, result.width)
    assert 0 < result.width * result.height <= MAX_PIXELS
    assert result.format in FORMATS.split(",")
    assert result.source_bytes == len(data)


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        result = decode_image(data, max_pixels=MAX_PIXELS, formats=FORMATS)
        assert result.rgb.shape[2] == 3, name


@pytest.mark.timeout(120)
@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    check(data)


@pytest.mark.timeout(120)
@FUZZ
@given(
    prefix=st.sampled_from(
        [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBP", b"BM", b"II*\x00", b"MM\x00*"]
    ),
    rest=st.binary(max_size=2048),
)
def test_random_bytes_behind_real_magic(prefix, rest):
    check(prefix + rest)


_position = st.integers(min_value=0, max_value=1 << 20)
MUTATION = st.one_of(
    st.tuples(st.just("flip"), _position, st.integers(0, 7)),
    st.tuples(st.just("set"), _position, st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(st.just("delete"), _position, st.integers(1, 64)),
    st.tuples(st.just("insert"), _position, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("header"), st.integers(0, 63), st.binary(min_size=1, max_size=8)),
    st.tuples(
        st.just("huge"),
        st.integers(0, 63),
        st.sampled_from([b"\xff\xff", b"\x7f\xff", b"\xff\xff\xff\x7f", b"\x00\x00"]),
    ),
)


def mutate(data: bytes, mutations: list[tuple]) -> bytes:
    buf = bytearray(data)
    for kind, *args in mutations:
        if not buf:
            break
        if kind == "flip":
            pos, bit = args
            buf[pos % len(buf)] ^= 1 << bit
        elif kind == "set":
            pos, value = args
            buf[pos % len(buf)] = value
        elif kind == "truncate":
            del buf[int(len(buf) * args[0]) :]
        elif kind == "delete":
            pos, length = args
            pos %= len(buf)
            del buf[pos : pos + length]
        elif kind == "insert":
            pos, chunk = args
            buf[pos % (len(buf) + 1) : pos % (len(buf) + 1)] = chunk
        elif kind in ("header", "huge"):
            offset, chunk = args
            buf[offset : offset + len(chunk)] = chunk
    return bytes(buf)


@pytest.mark.timeout(120)
@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), mutations=st.lists(MUTATION, min_size=1, max_size=6))
def test_mutated_images(seed, mutations):
    check(mutate(SEEDS[seed], mutations))


def _fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC so mutations reach the decoder instead of the CRC check."""
    out = bytearray(data[:8])
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        out += data[pos : pos + 8] + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        pos += 12 + length
    out += data[pos:]
    return bytes(out)


@pytest.mark.timeout(120)
@FUZZ
@given(
    seed=st.sampled_from(["png", "png-rgba", "png-16bit", "png-palette", "apng"]),
    mutations=st.lists(MUTATION, min_size=1, max_size=4),
)
def test_mutated_png_with_valid_crcs(seed, mutations):
    data = mutate(SEEDS[seed], mutations)
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        data = _fix_png_crcs(data)
    check(data)
