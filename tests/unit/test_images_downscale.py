"""Bounded decode memory: large images are analysed from a downscaled array (JPEG decoded at reduced
DCT scale), full-size decodes share a pixel budget, and region boxes come back in source pixels."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from schemas.results import ImageAnalysis
from workers.adapters.images import DecodedImage, PixelBudget, decode_image
from workers.analyzer.worker import in_source_pixels

FORMATS = "JPEG,PNG"


def encoded(width: int, height: int, fmt: str, **params) -> bytes:
    # a horizontal gradient: the left half dark, the right half bright, so downscaling keeps the layout
    x = np.linspace(0, 255, width, dtype=np.float32)
    rgb = np.repeat(np.repeat(x[None, :, None], height, axis=0), 3, axis=2).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, fmt, **params)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_large_images_are_downscaled_but_keep_their_source_size(fmt):
    result = decode_image(encoded(3000, 1200, fmt), max_pixels=10**8, formats=FORMATS, max_side=512)
    assert result.rgb.shape == (205, 512, 3)  # 1200 * 512 / 3000 = 204.8
    assert (result.width, result.height) == (3000, 1200)
    assert result.rgb[:, :50].mean() < 40 and result.rgb[:, -50:].mean() > 215


def test_small_images_and_no_max_side_are_left_alone():
    small = decode_image(encoded(400, 300, "PNG"), max_pixels=10**8, formats=FORMATS, max_side=512)
    assert small.rgb.shape == (300, 400, 3)
    full = decode_image(encoded(3000, 1200, "PNG"), max_pixels=10**8, formats=FORMATS)
    assert full.rgb.shape == (1200, 3000, 3)


def test_exif_rotated_jpeg_reports_the_upright_source_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: upright is portrait
    data = encoded(4800, 2000, "JPEG", exif=exif.tobytes())  # drafted at 1/4 scale, then rotated
    result = decode_image(data, max_pixels=10**8, formats=FORMATS, max_side=480)
    assert (result.width, result.height) == (2000, 4800)
    assert result.rgb.shape == (480, 200, 3)


def test_the_pixel_budget_bounds_concurrent_full_size_decodes():
    budget = PixelBudget(100)
    peak, lock = [0], threading.Lock()

    def work(pixels):
        with budget.reserve(pixels):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.02)

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 60, 30, 500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a reservation larger than the budget must still run (alone)"
    assert peak[0] <= 100 and budget.in_use == 0


def test_the_pixel_budget_is_released_when_decoding_fails():
    budget = PixelBudget(10)
    with pytest.raises(RuntimeError):
        with budget.reserve(8):
            raise RuntimeError("corrupt")
    assert budget.in_use == 0


def analysis_with(boxes: list[tuple[int, int, int, int]], width: int, height: int) -> ImageAnalysis:
    region = {"score": 0.5, "objectness": 0.5, "senti": 0.5, "dominant_emotion": "awe", "polarity": "positive"}
    probs = {e: 0.125 for e in ("anger", "disgust", "sadness", "fear", "excitement", "awe", "contentment", "amusement")}
    return ImageAnalysis.model_validate(
        {
            "polarity": "positive",
            "polarity_probs": {"positive": 0.6, "neutral": 0.1, "negative": 0.3},
            "emotion6": {e: 1 / 7 for e in ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")},
            "dominant_emotion6": "joy",
            "text_influence": {"status": "no_text"},
            "emotions": probs,
            "dominant_emotion": "awe",
            "evidence": [],
            "image_width": width,
            "image_height": height,
            "regions": [dict(region, x0=a, y0=b, x1=c, y1=d) for a, b, c, d in boxes],
        }
    )


def fake_decoded(array_w: int, array_h: int, width: int, height: int) -> DecodedImage:
    return DecodedImage(
        rgb=np.zeros((array_h, array_w, 3), np.uint8), width=width, height=height, format="PNG", source_bytes=1
    )


def test_region_boxes_are_mapped_back_to_source_pixels():
    analysis = analysis_with([(0, 0, 512, 205), (100, 50, 200, 100)], 512, 205)
    out = in_source_pixels(analysis, fake_decoded(512, 205, 3000, 1200))
    assert (out.image_width, out.image_height) == (3000, 1200)
    assert [(r.x0, r.y0, r.x1, r.y1) for r in out.regions] == [(0, 0, 3000, 1200), (585, 292, 1172, 586)]
    assert in_source_pixels(analysis, fake_decoded(512, 205, 512, 205)) is analysis


@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.integers(1, 40), st.integers(1, 40), st.data())
def test_mapped_boxes_stay_valid_and_inside_the_source(aw, ah, kx, ky, data):
    x0 = data.draw(st.integers(0, aw - 1))
    y0 = data.draw(st.integers(0, ah - 1))
    x1 = data.draw(st.integers(x0 + 1, aw))
    y1 = data.draw(st.integers(y0 + 1, ah))
    width, height = aw * kx + data.draw(st.integers(0, kx - 1)), ah * ky + data.draw(st.integers(0, ky - 1))
    out = in_source_pixels(analysis_with([(x0, y0, x1, y1)], aw, ah), fake_decoded(aw, ah, width, height))
    (r,) = out.regions
    ImageAnalysis.model_validate(out.model_dump())  # still a valid document
    assert 0 <= r.x0 < r.x1 <= width and 0 <= r.y0 < r.y1 <= height
    assert r.x0 <= x0 * width / aw <= r.x0 + 1 and r.x1 >= x1 * width / aw - 1
