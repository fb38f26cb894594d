"""Hostile input through the whole path: no crash, no hang, bounded memory, a clear reason for each refusal.

Unit level (no servers):
- hypothesis over post JSON: arbitrary JSON values, field-aware post-like objects, structurally and
  byte-wise mutated valid posts -> `schemas.posts.parse_post` returns a PostV1 (which round-trips)
  or raises a PostError subclass with a message, never anything else;
- hypothesis over image bytes (valid seeds of every format, mutated) sent as b64 posts through the
  real `AnalyzerWorker.process` (real ImageLoader, real tiny analyzer; in-memory Kafka / store
  fakes): `process` never raises, every record ends exactly once either stored or dead-lettered with
  headers that name the error and stage, no message echoes the image bytes, each batch within a deadline.
Integration (real worker subprocess, regions stage on, tansu + noida-db, a loopback HTTP server):
- a catalogue of hostile images and hostile post fields: each is analysed or dead-lettered with the
  expected class and stage; the worker never dies (one start, clean exit).

The SSRF refusals themselves are proven in tests/unit/test_images.py and
tests/integration/test_image_fetch.py; here a loopback-served SVG / HTML / gzip body / redirect to a
metadata address only go through the running worker to show the refusal reaches the DLQ.

Known bugs are pinned by strict xfail tests (they XPASS, and so fail, once fixed): see the reasons.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import resource
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from schemas.posts import PostError, PostV1, parse_post
from tests.reliability.conftest import SEED, SOAK
from tests.reliability.verify import all_committed, es_ids, produce, read_topic, wait_until
from tests.support.fakes import FakeConsumer, FakeProducer, FakeStore, Rec
from workers.devstack.sample_posts import png_bomb

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.TiffImagePlugin"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.PngImagePlugin"),
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data"),
    pytest.mark.filterwarnings("ignore::UserWarning:PIL.Image"),
]

_COUNTS: dict[str, dict[str, int]] = {}


def count(test: str, outcome: str) -> None:
    bucket = _COUNTS.setdefault(test, {})
    bucket[outcome] = bucket.get(outcome, 0) + 1


def known_parse_bug(exc: BaseException) -> str | None:
    """The two ways parse_post currently fails with something other than a PostError (see the xfails)."""
    if isinstance(exc, RecursionError):
        return "RecursionError (deeply nested JSON)"
    if type(exc) is ValueError and "integer string conversion" in str(exc):
        return "ValueError (integer with more than 4300 digits)"
    return None


def check_parse(raw: bytes, test: str) -> None:
    try:
        post = parse_post(raw)
    except PostError as exc:
        assert str(exc), "a PostError must say why"
        assert exc.stage == "validate"
        count(test, type(exc).__name__)
        return
    except Exception as exc:
        if known_parse_bug(exc):
            count(test, "known_bug")
            return
        raise
    assert isinstance(post, PostV1)
    assert PostV1.model_validate_json(post.model_dump_json()) == post
    count(test, "accepted")


# ---- post JSON -----------------------------------------------------------------------------------

JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
JSON_VALUES = st.recursive(
    JSON_LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20
)
FIELDS = ("schema_version", "post_id", "author_id", "channel", "created_at", "image", "text", "lang")
TRICKY = st.sampled_from(
    [
        1,
        0,
        -1,
        2,
        1.0,
        True,
        2**64,
        -(2**63),
        1e308,
        "1",
        "",
        " ",
        "a" * 128,
        "a" * 129,
        "a:b@c.d-e_f",
        "a/b",
        "a b",
        "\u202eevil",
        "\x00",
        "é",
        "😀",
        "\ud7ff",
        "2026-01-01T00:00:00",
        "2026-01-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "1970-01-01T00:00:00.000000001Z",
        "now",
        {"b64": "iVBORw0KGgo="},
        {"b64": "AAAA"},
        {"b64": "!!!!"},
        {"b64": "A"},
        {"b64": ""},
        {"url": "http://127.0.0.1/x.png"},
        {"url": "file:///etc/passwd"},
        {"path": "../../etc/passwd"},
        {"b64": "AAAA", "url": "http://x"},
        {},
        [],
        None,
        {"b64": "AAAA", "extra": 1},
        "x" * 10_001,
        "en",
        "e",
    ]
)
VALID_POST = {
    "schema_version": 1,
    "post_id": "p-1",
    "author_id": "a-1",
    "channel": "news",
    "created_at": "2026-11-01T12:00:00+00:00",
    "image": {"b64": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()},
    "text": "hello",
    "lang": "en",
}


@st.composite
def mutated_posts(draw) -> bytes:
    post: dict[str, Any] = json.loads(json.dumps(VALID_POST))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "set", "set_tricky", "add", "image", "nest", "digits"]))
        key = draw(st.sampled_from(FIELDS))
        if op == "drop":
            post.pop(key, None)
        elif op == "set":
            post[key] = draw(JSON_VALUES)
        elif op == "set_tricky":
            post[key] = draw(TRICKY)
        elif op == "add":
            post[draw(st.text(min_size=1, max_size=12))] = draw(JSON_VALUES)
        elif op == "image":
            post["image"] = {draw(st.sampled_from(["b64", "url", "path", "x"])): draw(TRICKY | JSON_VALUES)}
        elif op == "nest":  # JSON nested d levels deep, spliced in as raw text below
            post[key] = f"@@NEST{draw(st.sampled_from([2, 50, 900, 3000, 100_000]))}@@"
        elif op == "digits":
            post[key] = f"@@DIGITS{draw(st.sampled_from([10, 4300, 4301, 20_000]))}@@"
    raw = json.dumps(post, allow_nan=True)
    for marker, make in (("NEST", lambda d: "[" * d + "]" * d), ("DIGITS", lambda d: "7" * d)):
        while f'"@@{marker}' in raw:
            start = raw.index(f'"@@{marker}')
            end = raw.index('@@"', start + 3) + 3
            raw = raw[:start] + make(int(raw[start + 3 + len(marker) : end - 3])) + raw[end:]
    data = raw.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, 3))):  # byte-level damage
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data = data[:pos] + bytes([data[pos] ^ (1 << draw(st.integers(0, 7)))]) + data[pos + 1 :]
        elif op == "truncate":
            data = data[:pos]
        elif op == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 8)) :]
    return data


def _parse_fuzz(strategy, name: str, examples: int, encode=lambda v: json.dumps(v).encode("utf-8", "surrogatepass")):
    @hsettings(
        max_examples=examples,
        deadline=5000,
        derandomize=not SOAK,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(strategy)
    def test(value):
        check_parse(encode(value), name)

    return test


POST_LIKE = st.fixed_dictionaries(
    {"schema_version": st.just(1) | TRICKY},
    optional={name: TRICKY | JSON_VALUES for name in FIELDS[1:] + ("extra",)},
)


def _raw(v):
    return v


test_parse_post_on_arbitrary_json_values = _parse_fuzz(JSON_VALUES, "json_values", 300)
test_parse_post_on_post_like_objects = _parse_fuzz(POST_LIKE, "post_like", 300)
test_parse_post_on_mutated_valid_posts = _parse_fuzz(mutated_posts(), "mutated_posts", 300, _raw)
test_parse_post_on_arbitrary_bytes = _parse_fuzz(st.binary(max_size=300), "bytes", 300, _raw)
test_soak_parse_post_on_arbitrary_json_values = pytest.mark.slow(_parse_fuzz(JSON_VALUES, "json_values", 5000))
test_soak_parse_post_on_post_like_objects = pytest.mark.slow(_parse_fuzz(POST_LIKE, "post_like", 5000))
test_soak_parse_post_on_mutated_valid_posts = pytest.mark.slow(
    _parse_fuzz(mutated_posts(), "mutated_posts", 5000, _raw)
)
test_soak_parse_post_on_arbitrary_bytes = pytest.mark.slow(_parse_fuzz(st.binary(max_size=300), "bytes", 5000, _raw))


@pytest.fixture(scope="module", autouse=True)
def _report_fuzz_counts(record_figures):
    """After this module: the fuzz totals go into the session's figures."""
    yield
    parse = {k: v for k, v in _COUNTS.items() if k not in ("images", "images_time")}
    if parse:
        record_figures(
            "hostile_input: parse_post fuzz",
            {"fuzz_cases": sum(sum(v.values()) for v in parse.values()), "outcomes": parse},
        )
    if "images" in _COUNTS:
        outcomes = dict(_COUNTS["images"])
        record_figures(
            "hostile_input: image fuzz through AnalyzerWorker.process",
            {
                "fuzz_batches": outcomes.pop("batches", 0),
                "fuzz_images": sum(outcomes.values()),
                "outcomes": outcomes,
                **_COUNTS.get("images_time", {}),
                "test_process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
        )


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000,
        b'{"schema_version": 1, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"schema_version": ' + b"1" * 5000 + b"}",
    ],
    ids=["nested-array", "nested-field", "digits"],
)
def test_json_bombs_are_malformed_posts(raw):
    with pytest.raises(PostError):
        parse_post(raw)


# ---- the worker's process() on fuzzed images -----------------------------------------------------


@pytest.fixture(scope="module")
def inproc_worker(tiny_db_dir):
    """The real AnalyzerWorker with the real ImageLoader and tiny analyzer; Kafka and store faked."""
    import os

    import torch
    from prometheus_client import CollectorRegistry

    from tests.support.chaos import build_tiny_analyzer
    from workers.adapters.images import ImageLoader
    from workers.analyzer.metrics import WorkerMetrics
    from workers.analyzer.settings import AnalyzerSettings as Settings
    from workers.analyzer.worker import AnalyzerWorker

    os.environ["MOODWATCH_TEST_DB_DIR"] = str(tiny_db_dir)
    torch.set_num_threads(1)
    cfg = Settings(
        image_max_pixels=1 << 22,
        image_max_bytes=1 << 20,
        fetch_workers=2,
        batch_max_posts=8,
        posts_topic="posts",
        metrics_port=0,
    )
    loader = ImageLoader(cfg)
    worker = AnalyzerWorker(
        cfg,
        consumer=FakeConsumer(),
        producer=FakeProducer(),
        analyzer=build_tiny_analyzer(),
        images=loader,
        store=FakeStore(),
        metrics=WorkerMetrics.create(CollectorRegistry()),
    )
    yield worker
    loader.close()


def _enc(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def image_seeds() -> list[bytes]:
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8), "RGB")
    frames = [Image.new("RGB", (16, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6
    return [
        _enc(rgb, "JPEG", quality=80),
        _enc(rgb, "JPEG", progressive=True),
        _enc(rgb, "JPEG", exif=exif.tobytes()),
        _enc(rgb.convert("CMYK"), "JPEG"),
        _enc(rgb, "PNG"),
        _enc(rgb.convert("RGBA"), "PNG"),
        _enc(rgb.convert("LA"), "PNG"),
        _enc(Image.fromarray(rng.integers(0, 65535, (10, 12), dtype=np.uint16)), "PNG"),
        _enc(rgb.convert("P"), "PNG", transparency=3),
        _enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0),
        _enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True),
        _enc(rgb, "BMP"),
        _enc(rgb.convert("1"), "PNG"),
        png_bomb(5000, 5000),
        _enc(rgb, "TIFF"),
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
        b"<html><body>hi</body></html>",
    ]


SEEDS = image_seeds()


@st.composite
def fuzzed_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "byte", "truncate", "insert", "delete", "dims"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if not data:
            break
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[max(1, pos) :]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "dims" and len(data) > 24:  # a header dimension field set huge (PNG / GIF / BMP offsets)
            where = draw(st.sampled_from([6, 16, 18, 20]))
            data[where : where + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 65535, 2**31 - 1, 2**32 - 1])))
    return bytes(data)


def _post(key: str, image: dict) -> bytes:
    return json.dumps(
        {
            "schema_version": 1,
            "post_id": key,
            "author_id": "a",
            "channel": "c",
            "created_at": "2026-11-01T12:00:00Z",
            "image": image,
        }
    ).encode()


_OFFSET = [0]


def check_process(worker, images: list[bytes]) -> None:
    worker.producer.sent.clear()
    worker.store.docs.clear()
    records = []
    for data in images:
        _OFFSET[0] += 1
        key = f"img-{_OFFSET[0]}"
        records.append(Rec("posts", 0, _OFFSET[0], key.encode(), _post(key, {"b64": base64.b64encode(data).decode()})))
    started = time.monotonic()
    worker.process(records)  # must not raise
    elapsed = time.monotonic() - started
    stored = [r.post_id for r in worker.store.docs]
    dead = {}
    for topic, key, _value, headers in worker.producer.sent:
        if topic == worker.settings.dlq_topic:
            dead[key.decode()] = {k: v.decode() for k, v in headers}
    keys = [r.key.decode() for r in records]
    assert sorted(stored + list(dead)) == sorted(keys), "each record exactly once: stored or dead-lettered"
    for key, h in dead.items():
        assert h["error.class"] and h["error.message"] and h["stage"] in ("validate", "fetch", "decode", "analyze"), h
        b64 = json.loads(dict((r.key.decode(), r.value) for r in records)[key])["image"]["b64"]
        assert len(b64) < 16 or b64[:64] not in h["error.message"], "the reason must not echo the image"
        count("images", f"{h['stage']}:{h['error.class']}")
    for _ in stored:
        count("images", "analysed")
    count("images", "batches")
    _COUNTS.setdefault("images_time", {"max_batch_ms": 0})
    _COUNTS["images_time"]["max_batch_ms"] = max(_COUNTS["images_time"]["max_batch_ms"], int(elapsed * 1000))
    assert worker.consumer.commits, "the batch must be committed"


def _image_fuzz(examples: int):
    @hsettings(
        max_examples=examples,
        deadline=20_000,
        derandomize=not SOAK,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(fuzzed_images(), min_size=1, max_size=4))
    def test(inproc_worker, images):
        check_process(inproc_worker, images)

    return test


test_worker_process_on_fuzzed_images = _image_fuzz(120)
test_soak_worker_process_on_fuzzed_images = pytest.mark.slow(_image_fuzz(2000))


def test_worker_process_survives_json_bombs(inproc_worker):
    worker = inproc_worker
    worker.producer.sent.clear()
    worker.store.docs.clear()
    good = _post("good-1", {"b64": base64.b64encode(SEEDS[4]).decode()})
    records = [
        Rec("posts", 1, 1, b"good-1", good),
        Rec("posts", 1, 2, b"bomb-1", b"[" * 100_000),
        Rec("posts", 1, 3, b"bomb-2", b'{"schema_version": ' + b"9" * 5000 + b"}"),
    ]
    worker.process(records)
    dead = {k.decode(): dict(h) for t, k, v, h in worker.producer.sent if t == worker.settings.dlq_topic}
    assert set(dead) == {"bomb-1", "bomb-2"} and [d.post_id for d in worker.store.docs] == ["good-1"]


@pytest.mark.parametrize("shape", [(1, 500), (500, 1), (7, 3000)])
def test_thin_images_are_analysed_with_regions(tiny_db_dir, shape):
    import os

    os.environ["MOODWATCH_TEST_DB_DIR"] = str(tiny_db_dir)
    os.environ["MOODWATCH_TEST_REGIONS"] = "1"
    try:
        from tests.support.chaos import build_tiny_analyzer

        analyzer = build_tiny_analyzer()
    finally:
        os.environ.pop("MOODWATCH_TEST_REGIONS", None)
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    (result,) = analyzer.analyze([img])
    assert (result.image_height, result.image_width) == shape


# ---- the catalogue through the running worker ----------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_16bit_rgb(width: int = 3, height: int = 2) -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    raw = b"".join(b"\x00" + struct.pack(">HHH", 65535, 0, 32896) * width for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def gif_huge_canvas() -> bytes:
    data = bytearray(_enc(Image.new("P", (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", 65000, 65000)
    return bytes(data)


def jpeg_huge_dims() -> bytes:
    data = bytearray(_enc(Image.new("RGB", (16, 16)), "JPEG"))
    sof = bytes(data).index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def zip_bomb() -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("image.png", b"\x00" * (50 << 20))  # 50 MB of zeros in ~50 KB
    return buf.getvalue()


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _enc(Image.new("RGB", (80, 40), (0, 0, 255)), "JPEG", exif=exif.tobytes())


ANALYSED = "analysed"


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


def catalogue(base_url: str) -> list[tuple[str, Any, Any]]:
    """(name, image ref or a raw post value, expected): expected is ANALYSED or (error.class, stage)."""
    rng = np.random.default_rng(SEED)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    jpeg = _enc(noise, "JPEG", quality=85)
    png = _enc(noise, "PNG")
    return [
        ("truncated-jpeg", b64(jpeg[: len(jpeg) // 2]), ("CorruptImage", "decode")),
        ("truncated-png", b64(png[: len(png) // 2]), ("CorruptImage", "decode")),
        ("png-pixel-bomb-30000x30000", b64(png_bomb()), ("TooManyPixels", "decode")),
        ("gif-canvas-65000x65000", b64(gif_huge_canvas()), ("TooManyPixels", "decode")),
        ("jpeg-header-65000x65000", b64(jpeg_huge_dims()), ("TooManyPixels", "decode")),
        ("zip-bomb-50MB-zeros", b64(zip_bomb()), ("UnsupportedFormat", "decode")),
        ("gzip-bomb-8MB-zeros", b64(gzip.compress(b"\x00" * (8 << 20))), ("UnsupportedFormat", "decode")),
        ("tiff-not-allowed", b64(_enc(noise, "TIFF")), ("UnsupportedFormat", "decode")),
        (
            "svg-inline",
            b64(b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'/>"),
            ("UnsupportedFormat", "decode"),
        ),
        ("html-inline", b64(b"<!doctype html><html><script>alert(1)</script></html>"), ("UnsupportedFormat", "decode")),
        (
            "animated-gif",
            b64(_enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)),
            ANALYSED,
        ),
        (
            "animated-webp",
            b64(_enc(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)),
            ANALYSED,
        ),
        ("apng", b64(_enc(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=40)), ANALYSED),
        ("cmyk-jpeg", b64(_enc(noise.convert("CMYK"), "JPEG")), ANALYSED),
        (
            "png-16bit-gray",
            b64(_enc(Image.fromarray(rng.integers(0, 65535, (40, 30), dtype=np.uint16)), "PNG")),
            ANALYSED,
        ),
        ("png-16bit-rgb", b64(png_16bit_rgb(40, 30)), ANALYSED),
        ("png-rgba", b64(_enc(noise.convert("RGBA"), "PNG")), ANALYSED),
        ("png-la", b64(_enc(noise.convert("LA"), "PNG")), ANALYSED),
        ("png-palette-transparent", b64(_enc(noise.convert("P"), "PNG", transparency=0)), ANALYSED),
        ("png-1bit", b64(_enc(noise.convert("1"), "PNG")), ANALYSED),
        ("jpeg-exif-orientation-6", b64(exif_rotated()), ANALYSED),
        ("png-1x1", b64(_enc(Image.new("RGB", (1, 1)), "PNG")), ANALYSED),
        ("png-2000x2000-flat", b64(_enc(Image.new("RGB", (2000, 2000), (9, 9, 9)), "PNG")), ANALYSED),
        (
            "empty-b64",
            "raw:"
            + json.dumps(
                {
                    "schema_version": 1,
                    "post_id": "cat-empty-b64",
                    "author_id": "a",
                    "channel": "c",
                    "created_at": "2026-11-01T12:00:00Z",
                    "image": {"b64": ""},
                }
            ),
            ("InvalidPost", "validate"),
        ),
        (
            "invalid-b64",
            "raw:"
            + json.dumps(
                {
                    "schema_version": 1,
                    "post_id": "cat-invalid-b64",
                    "author_id": "a",
                    "channel": "c",
                    "created_at": "2026-11-01T12:00:00Z",
                    "image": {"b64": "!!!!"},
                }
            ),
            ("InvalidPost", "validate"),
        ),
        # served over HTTP from loopback (private addresses allowed: test settings)
        ("url-png", {"url": f"{base_url}/ok.png"}, ANALYSED),
        ("url-svg-as-image", {"url": f"{base_url}/img.svg"}, ("UnsupportedFormat", "decode")),
        ("url-html-as-jpeg", {"url": f"{base_url}/html-as.jpg"}, ("UnsupportedFormat", "decode")),
        ("url-text-html", {"url": f"{base_url}/page"}, ("UnsupportedFormat", "fetch")),
        ("url-gzip-encoded-bomb", {"url": f"{base_url}/gzip.png"}, ("FetchFailed", "fetch")),
        ("url-redirect-to-metadata", {"url": f"{base_url}/to-metadata"}, ("BlockedURL", "fetch")),
        ("url-slow-drip", {"url": f"{base_url}/drip.jpg"}, ("FetchTimeout", "fetch")),
        ("url-404", {"url": f"{base_url}/missing.png"}, ("FetchFailed", "fetch")),
    ]


def hostile_fields() -> list[tuple[str, bytes, Any]]:
    """Valid images with hostile post fields (stored as given, or refused by the schema)."""
    img = {"b64": base64.b64encode(_enc(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG")).decode()}

    def post(key: str, **over) -> bytes:
        body = {
            "schema_version": 1,
            "post_id": key,
            "author_id": "a",
            "channel": "c",
            "created_at": "2026-11-01T12:00:00Z",
            "image": img,
        }
        body.update(over)
        return json.dumps(body, ensure_ascii=False).encode()

    return [
        ("field-text-10000-emoji", post("cat-field-text", text="😀" * 10_000), ANALYSED),
        ("field-text-controls-rtl", post("cat-field-ctrl", text="\u202e\x00\x07<script>\u0000"), ANALYSED),
        ("field-created-year-9999", post("cat-field-y9999", created_at="9999-12-31T23:59:59-14:00"), ANALYSED),
        ("field-created-year-0001", post("cat-field-y0001", created_at="0001-01-01T00:00:00+14:00"), ANALYSED),
        ("field-created-naive", post("cat-field-naive", created_at="2026-11-01T12:00:00"), ("InvalidPost", "validate")),
        ("field-lang-odd", post("cat-field-lang", lang="zz-\u202e\u0000"), ANALYSED),
        ("field-id-too-long", post("x" * 129), ("InvalidPost", "validate")),
        ("field-extra", post("cat-field-extra", admin=True), ("InvalidPost", "validate")),
        (
            "field-duplicate-key",
            b'{"schema_version": 1, "post_id": "cat-field-dup", "post_id": "cat-field-dup2", '
            b'"author_id": "a", "channel": "c", "created_at": "2026-11-01T12:00:00Z", "image": '
            + json.dumps(img).encode()
            + b"}",
            ANALYSED,
        ),
    ]


class _Handler(BaseHTTPRequestHandler):
    png = b""

    def log_message(self, *a):
        pass

    def _send(self, status: int, ctype: str, body: bytes, extra: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/ok.png":
            self._send(200, "image/png", self.png)
        elif self.path == "/img.svg":
            self._send(200, "image/svg+xml", b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>")
        elif self.path == "/html-as.jpg":
            self._send(200, "image/jpeg", b"<html><body>not a jpeg</body></html>")
        elif self.path == "/page":
            self._send(200, "text/html; charset=utf-8", b"<html></html>")
        elif self.path == "/gzip.png":
            self._send(200, "image/png", zlib.compress(b"\x00" * (4 << 20)), {"Content-Encoding": "gzip"})
        elif self.path == "/to-metadata":
            self._send(302, "text/plain", b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path == "/drip.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                for _ in range(40):  # ~4 s for the first 40 bytes; the worker's deadline is 2 s
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        else:
            self._send(404, "text/plain", b"no")


@pytest.fixture
def image_server():
    _Handler.png = _enc(Image.new("RGB", (24, 24), (10, 200, 10)), "PNG")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.timeout(420)
def test_hostile_catalogue_through_the_running_worker(local_stack, make_settings, worker_env, image_server, figures):
    settings = make_settings(local_stack, image_allow_private_addresses=True, batch_max_posts=16)
    items: list[tuple[str, str, bytes, Any]] = []
    for name, ref, expected in catalogue(image_server):
        key = f"cat-{name}"
        value = ref[4:].encode() if isinstance(ref, str) and ref.startswith("raw:") else _post(key, ref)
        if isinstance(ref, str):
            key = json.loads(value)["post_id"]
        items.append((name, key, value, expected))
    for name, value, expected in hostile_fields():
        try:
            key = json.loads(value)["post_id"]
        except Exception:  # noqa: BLE001 - hostile bytes need not be JSON at all
            key = f"cat-{name}"
        items.append((name, key, value, expected))
    valid = [
        (
            f"cat-valid-{i}",
            _post(f"cat-valid-{i}", {"b64": base64.b64encode(_enc(Image.new("RGB", (8, 8)), "PNG")).decode()}),
        )
        for i in range(20)
    ]
    records = [(key, value) for _, key, value, _ in items] + valid
    # the duplicate-key post is stored under the LAST post_id (json.loads keeps the last key)
    expect_key = {name: ("cat-field-dup2" if name == "field-duplicate-key" else key) for name, key, _, _ in items}

    worker = worker_env(settings, MOODWATCH_TEST_REGIONS="1").start()
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, records)
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=300,
        interval=0.5,
        what="catalogue committed",
        while_alive=worker,
        on_tick=worker.sample_memory,
    )
    peak_mb = round(worker.peak_rss_kb / 1024, 1)
    assert worker.alive()
    assert worker.stop() == 0, worker.log_tail(60)
    assert worker.starts == 1

    stored = set(es_ids(settings))
    dlq = read_topic(settings.kafka_bootstrap, settings.dlq_topic, expect_at_least=1, quiet_s=1.5, timeout_s=30)
    dead = {}
    for r in dlq:
        h = {k: v.decode() for k, v in r.headers}
        dead.setdefault(r.key.decode(), h)
    outcomes, wrong = {}, []
    for name, key, _, expected in items:
        k = expect_key[name]
        if k in stored and key not in dead:
            got = ANALYSED
        elif key in dead:
            got = (dead[key]["error.class"], dead[key]["stage"])
            assert dead[key]["error.message"], f"{name}: empty reason"
        else:
            got = "MISSING"
        outcomes[name] = (
            got if got in (ANALYSED, "MISSING") else f"{got[1]}:{got[0]} ({dead[key]['error.message'][:70]})"
        )
        if got != expected:
            wrong.append(f"{name}: got {got}, expected {expected}")
    assert all(f"cat-valid-{i}" in stored for i in range(20)), "the valid posts around the hostile ones must flow"
    from workers.adapters.elastic import make_es_client

    es = make_es_client(settings)
    rotated = es.get(index=settings.es_results_index, id="cat-jpeg-exif-orientation-6")["_source"]
    es.close()
    assert (rotated["image_width"], rotated["image_height"]) == (40, 80), (
        "EXIF orientation 6: stored 80x40, upright 40x80"
    )
    figures.update(
        {
            "catalogue_items": len(items),
            "analysed": sum(v == ANALYSED for v in outcomes.values()),
            "dead_lettered": sum(v not in (ANALYSED, "MISSING") for v in outcomes.values()),
            "missing": sum(v == "MISSING" for v in outcomes.values()),
            "worker_starts": worker.starts,
            "worker_peak_rss_mb": peak_mb,
            "outcomes": outcomes,
            "unexpected": wrong,
        }
    )
    assert not wrong, "\n".join(wrong)


# ---- large images that are within the limits ------------------------------------------------------


def big_flat_png(side: int = 6000) -> bytes:
    """36 Mpx (under the default image_max_pixels of 40 M) in ~120 KB: a pixel bomb within the limits."""
    return _enc(Image.new("RGB", (side, side), (120, 30, 200)), "PNG")


def run_big_images(n_big: int, batch: int, *, local_stack, make_settings, worker_env, figures) -> dict:
    settings = make_settings(local_stack, batch_max_posts=batch, batch_max_wait_ms=2000)
    small = {"b64": base64.b64encode(_enc(Image.new("RGB", (8, 8)), "PNG")).decode()}
    worker = worker_env(settings).start()
    ends, _ = produce(
        settings.kafka_bootstrap, settings.posts_topic, [(f"warm-{i}", _post(f"warm-{i}", small)) for i in range(20)]
    )
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=180,
        what="warm-up",
        while_alive=worker,
    )
    baseline = worker.sample_memory()
    big = {"b64": base64.b64encode(big_flat_png()).decode()}
    more, _ = produce(
        settings.kafka_bootstrap, settings.posts_topic, [(f"big-{i}", _post(f"big-{i}", big)) for i in range(n_big)]
    )
    ends = {p: max(ends.get(p, 0), more.get(p, 0)) for p in set(ends) | set(more)}
    started = time.monotonic()
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=900,
        interval=0.2,
        what="large images analysed",
        while_alive=worker,
        on_tick=worker.sample_memory,
    )
    took = time.monotonic() - started
    peak = worker.sample_memory().get("VmHWM", 0)
    assert worker.stop() == 0, worker.log_tail(40)
    stored = set(es_ids(settings))
    growth_mb = (peak - baseline.get("VmHWM", 0)) / 1024
    per_image = growth_mb / min(n_big, batch)
    out = {
        "large_images": n_big,
        "pixels_each": 36_000_000,
        "post_bytes_each": len(big["b64"]),
        "batch_max_posts": batch,
        "baseline_hwm_mb": round(baseline.get("VmHWM", 0) / 1024, 1),
        "peak_hwm_mb": round(peak / 1024, 1),
        "growth_mb": round(growth_mb, 1),
        "growth_per_image_in_batch_mb": round(per_image, 1),
        "seconds": round(took, 1),
        "decoded_rgb_mb_each": round(36_000_000 * 3 / 2**20, 1),
        "analysed": sum(f"big-{i}" in stored for i in range(n_big)),
    }
    figures.update(out)
    assert out["analysed"] == n_big
    from workers.adapters.elastic import make_es_client

    es = make_es_client(settings)
    doc = es.get(index=settings.es_results_index, id="big-0")["_source"]
    es.close()
    assert (doc["image_width"], doc["image_height"]) == (6000, 6000)
    assert all(r["x1"] <= 6000 and r["y1"] <= 6000 for r in doc["regions"])
    return out


# Each 36 Mpx image is decoded at full size under the shared pixel budget (two at a time with the
# default 80 M), then kept only as a 1024-px array: growth must stay far below one full-size bitmap
# (~103 MB of RGB) per image in the batch.
GROWTH_LIMIT_MB = 1200


@pytest.mark.timeout(420)
def test_a_batch_of_large_allowed_images_is_analysed_in_bounded_memory(local_stack, make_settings, worker_env, figures):
    """Eight 36 Mpx PNGs of ~120 KB each (within the limits) in one batch: analysed, boxes in source
    pixels, worker alive, and the peak RSS growth bounded by the decode budget, not the batch size."""
    out = run_big_images(
        8, 8, local_stack=local_stack, make_settings=make_settings, worker_env=worker_env, figures=figures
    )
    assert out["growth_mb"] < GROWTH_LIMIT_MB, out


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_soak_default_batch_of_32_large_images_fits_the_pod_memory_limit(
    local_stack, make_settings, worker_env, figures
):
    """Before the decode budget and downscaling, 32 of these peaked at 4.5 GB (over the chart's 4 GiB)."""
    out = run_big_images(
        32, 32, local_stack=local_stack, make_settings=make_settings, worker_env=worker_env, figures=figures
    )
    assert out["peak_hwm_mb"] < 4096 and out["growth_mb"] < GROWTH_LIMIT_MB, out
