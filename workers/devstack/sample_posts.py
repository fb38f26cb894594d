"""Sample posts for the demo and tests: real photos that ship with scikit-image, plus poison posts."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

# Photos bundled inside the scikit-image wheel (no download needed).
SAMPLE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "horse.png",
    "camera.png",
    "moon.png",
    "retina.jpg",
    "coins.png",
    "no_time_for_that_tiny.gif",
)
CHANNELS = ("news", "sports", "pets")


def photo_bytes(name: str) -> bytes:
    return resources.files("skimage.data").joinpath(name).read_bytes()


def photo_jpeg(name: str, quality: int = 88) -> bytes:
    """The photo re-encoded as a JPEG, the size a social post would carry (animated GIFs kept as they are)."""
    raw = photo_bytes(name)
    if name.endswith(".gif"):
        return raw
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        out = io.BytesIO()
        im.convert("RGB").save(out, format="JPEG", quality=quality)
        return out.getvalue()


def post_json(
    post_id: str,
    *,
    channel: str,
    image: dict,
    created_at: datetime,
    text: str | None = None,
    author_id: str = "demo-author",
    version: int = 1,
) -> bytes:
    body = {
        "schema_version": version,
        "post_id": post_id,
        "author_id": author_id,
        "channel": channel,
        "created_at": created_at.isoformat(),
        "image": image,
    }
    if text is not None:
        body["text"] = text
    return json.dumps(body).encode()


def sample_posts(
    count: int = 24, start: datetime | None = None, image_dir: Path | None = None
) -> Iterator[tuple[str, bytes]]:
    """(post_id, value) for `count` valid posts cycling over the bundled photos and channels.

    With `image_dir`, odd posts reference the photo as a local file written there (image.path),
    which the dashboard can show; even posts carry the bytes inline (image.b64).
    """
    start = start or datetime.now(UTC) - timedelta(minutes=count)
    for i in range(count):
        name = SAMPLE_PHOTOS[i % len(SAMPLE_PHOTOS)]
        post_id = f"demo-{i:04d}"
        if image_dir is not None and i % 2:
            path = Path(image_dir) / (Path(name).stem + (".gif" if name.endswith(".gif") else ".jpg"))
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(photo_jpeg(name))
            image = {"path": str(path)}
        else:
            image = {"b64": base64.b64encode(photo_jpeg(name)).decode()}
        yield (
            post_id,
            post_json(
                post_id,
                channel=CHANNELS[i % len(CHANNELS)],
                image=image,
                created_at=start + timedelta(minutes=i),
                text=f"sample photo {name}",
                author_id=f"author-{i % 5}",
            ),
        )


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header declares width x height 1-bit pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def poison_posts(start: datetime | None = None) -> list[tuple[str, str, bytes]]:
    """(label, key, value) for deliberately broken posts; each must be dead-lettered with a clear reason."""
    start = start or datetime.now(UTC)

    def b64(data: bytes) -> dict[str, str]:
        return {"b64": base64.b64encode(data).decode()}

    return [
        ("bad JSON", "poison-json", b"{this is not json"),
        ("missing fields", "poison-missing", json.dumps({"schema_version": 1, "post_id": "poison-missing"}).encode()),
        (
            "unknown schema version",
            "poison-version",
            post_json(
                "poison-version", channel="news", image=b64(photo_jpeg("coffee.png")), created_at=start, version=99
            ),
        ),
        (
            "non-image bytes",
            "poison-bytes",
            post_json(
                "poison-bytes", channel="news", image=b64(b"<html><body>not an image</body></html>"), created_at=start
            ),
        ),
        (
            "decompression bomb",
            "poison-bomb",
            post_json("poison-bomb", channel="news", image=b64(png_bomb()), created_at=start),
        ),
        (
            "unreachable URL",
            "poison-url",
            post_json("poison-url", channel="news", image={"url": "http://127.0.0.1:9/none.jpg"}, created_at=start),
        ),
        (
            "Kafka key is not the post_id",
            "poison-key",
            post_json("another-post", channel="news", image=b64(photo_jpeg("coffee.png")), created_at=start),
        ),
    ]
