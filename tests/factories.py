"""Builders for valid contract objects in tests: posts, results, alerts, tiny images.

Everything is deterministic for given arguments (no randomness, fixed default clock), and every
field can be overridden by keyword, so other tests can build exactly the case they need:

    post = make_post("p1", channel="news", text="hello")
    result = make_result("p1", channel="news", negative=0.8)     # polarity "negative" (AnalysisResultV2)
    alert = make_alert("news", window_start=T0)
    png = tiny_png(16, 12, color=(255, 0, 0))
"""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from PIL import Image

from schemas.emotions import EMOTION6_LABELS, MIKELS_EMOTIONS, NEGATIVE_EMOTIONS
from schemas.posts import ImageRef, PostV1
from schemas.results import (
    AlertV1,
    AnalysisResultV1,
    AnalysisResultV2,
    Emotion6Distribution,
    EmotionDistribution,
    Evidence,
    ModelVersions,
    PolarityProbs,
    PolarityProbs3,
    Region,
    StageTimings,
    TextInfluence,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

MODEL_VERSIONS = ModelVersions(
    analyzer="moodwatch-test",
    backend="local",
    image_encoder="efficientnet-lite0",
    text_encoder="all-MiniLM-L6-v2",
    heads="heads-test",
    index="index-test",
)


def tiny_png(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid PNG of the given size, one colour, with a darker diagonal so it is not flat."""
    img = Image.new("RGB", (width, height), color)
    dark = tuple(c // 3 for c in color)
    for i in range(min(width, height)):
        img.putpixel((i, i), dark)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def tiny_png_b64(width: int = 8, height: int = 8, color: tuple[int, int, int] = (200, 30, 30)) -> str:
    return base64.b64encode(tiny_png(width, height, color)).decode("ascii")


def make_post(
    post_id: str,
    *,
    channel: str = "channel-1",
    author_id: str = "author-1",
    created_at: datetime | None = None,
    text: str | None = "a test post",
    lang: str | None = "en",
    image_url: str | None = None,
    image_path: str | None = None,
    image_b64: str | None = None,
    size: tuple[int, int] = (8, 8),
    **overrides: Any,
) -> PostV1:
    """A valid PostV1. The image is an inline b64 tiny PNG unless image_url / image_path /
    image_b64 is given."""
    if image_url is None and image_path is None and image_b64 is None:
        image_b64 = tiny_png_b64(*size)
    fields: dict[str, Any] = dict(
        schema_version=1,
        post_id=post_id,
        author_id=author_id,
        channel=channel,
        created_at=created_at or T0,
        image=ImageRef(url=image_url, b64=image_b64, path=image_path),
        text=text,
        lang=lang,
    )
    fields.update(overrides)
    return PostV1(**fields)


def post_json(post_id: str, **kw: Any) -> bytes:
    """The Kafka value for make_post(...)."""
    return make_post(post_id, **kw).model_dump_json().encode()


def make_emotions(negative: float, *, dominant: str | None = None) -> EmotionDistribution:
    """An 8-emotion distribution whose negative emotions sum to `negative` (to ~1e-6; values are
    rounded to 6 decimals because noida-db returns floats with 16 significant digits).

    Mass is split unevenly inside each polarity so there is a clear dominant emotion; pass
    `dominant` to choose it (it must match the larger side unless negative is 0.5)."""
    neg_names = [e for e in MIKELS_EMOTIONS if e in NEGATIVE_EMOTIONS]
    pos_names = [e for e in MIKELS_EMOTIONS if e not in NEGATIVE_EMOTIONS]
    weights = [0.55, 0.25, 0.12, 0.08]
    if dominant is None:
        dominant = neg_names[2] if negative >= 0.5 else pos_names[2]  # sadness / contentment
    values: dict[str, float] = {}
    for names, mass in ((neg_names, negative), (pos_names, 1.0 - negative)):
        order = sorted(names, key=lambda n: n != dominant)  # dominant first, if on this side
        for name, w in zip(order, weights):
            values[name] = round(mass * w, 6)  # short decimals survive stores that reformat floats
    return EmotionDistribution(**values)


def make_regions(count: int, *, negative: float = 0.2, width: int = 640, height: int = 480) -> list[Region]:
    regions = []
    for i in range(count):
        x0, y0 = (17 * i) % (width // 2), (13 * i) % (height // 2)
        polarity = "negative" if (negative >= 0.5) == (i % 3 != 2) else "positive"
        regions.append(
            Region(
                x0=x0,
                y0=y0,
                x1=x0 + max(1, width // 4) + i,
                y1=y0 + max(1, height // 4) + i,
                score=round(max(0.05, 0.9 - 0.05 * i), 4),
                objectness=round(max(0.05, 0.8 - 0.04 * i), 4),
                senti=round(max(0.05, 0.7 - 0.03 * i), 4),
                dominant_emotion="sadness" if polarity == "negative" else "awe",
                polarity=polarity,
            )
        )
    return regions


_EVIDENCE = [
    ("a lonely figure in the rain feels deeply sad", "sadness", "goemotions"),
    ("children laughing at the beach on a sunny day", "amusement", "coco"),
    ("an angry crowd shouting in the street", "anger", "isear"),
    ("a breathtaking view of mountains at dawn", "awe", "flickr8k"),
]


def make_evidence(count: int) -> list[Evidence]:
    return [
        Evidence(text=text, emotion=emotion, similarity=round(0.8 - 0.1 * i, 3), source=source)
        for i, (text, emotion, source) in enumerate((_EVIDENCE * (count // len(_EVIDENCE) + 1))[:count])
    ]


def make_result(
    post_id: str,
    *,
    channel: str = "channel-1",
    negative: float = 0.2,
    created_at: datetime | None = None,
    analyzed_at: datetime | None = None,
    author_id: str = "author-1",
    text: str | None = "a test post",
    lang: str | None = "en",
    regions: int = 3,
    evidence: int = 3,
    size: tuple[int, int] = (640, 480),
    neutral: float = 0.0,
    **overrides: Any,
) -> AnalysisResultV2:
    """A valid, realistic AnalysisResultV2: probabilities negative, `neutral` and the rest positive, the
    polarity their argmax (with neutral 0: "negative" iff negative >= 0.5), consistent emotion distributions
    and dominant emotions, `regions` boxes, `evidence` sentences."""
    created_at = created_at or T0
    emotions = make_emotions(negative)
    emotion6 = make_emotion6(negative)
    probs = PolarityProbs3(positive=round(max(0.0, 1.0 - negative - neutral), 6), neutral=neutral, negative=negative)
    fields: dict[str, Any] = dict(
        post_id=post_id,
        author_id=author_id,
        channel=channel,
        created_at=created_at,
        analyzed_at=analyzed_at or created_at + timedelta(seconds=2),
        lang=lang,
        text=text,
        image_ref="inline",
        image_width=size[0],
        image_height=size[1],
        polarity="negative" if negative >= 0.5 else probs.verdict(),
        polarity_probs=probs,
        negative_score=negative,
        emotions=emotions,
        dominant_emotion=emotions.dominant(),
        emotion6=emotion6,
        dominant_emotion6=emotion6.dominant(),
        text_influence=TextInfluence(status="used", shift=0.1, polarity_without_text="positive")
        if text
        else TextInfluence(status="no_text"),
        regions=make_regions(regions, negative=negative, width=size[0], height=size[1]),
        evidence=make_evidence(evidence),
        model_versions=MODEL_VERSIONS,
        timings=StageTimings(fetch_seconds=0.01, decode_seconds=0.002, analyze_seconds=0.05, total_seconds=0.062),
    )
    fields.update(overrides)
    return AnalysisResultV2(**fields)


def make_result_v1(post_id: str, *, negative: float = 0.2, **kw: Any) -> AnalysisResultV1:
    """A stored result from before schema v2 (two-way polarity, no Emotion6, no text influence)."""
    v2 = make_result(post_id, negative=negative, **kw).model_dump(
        exclude={"schema_version", "emotion6", "dominant_emotion6", "text_influence"}
    )
    v2["polarity_probs"] = PolarityProbs(positive=round(1.0 - negative, 6), negative=negative)
    v2["evidence"] = [{k: v for k, v in e.items() if k in ("text", "emotion", "similarity", "source")}
                      for e in v2["evidence"]]  # fmt: skip
    return AnalysisResultV1(**v2)


def make_emotion6(negative: float) -> Emotion6Distribution:
    """An Emotion6 distribution leaning to sadness with `negative`, to joy otherwise, some neutral."""
    weights = {label: 0.05 for label in EMOTION6_LABELS}
    weights["sadness"] += negative
    weights["joy"] += 1.0 - negative
    weights["neutral"] += 0.1
    total = sum(weights.values())
    # short decimals survive stores that reformat floats (noida-db returns 16 significant digits)
    return Emotion6Distribution.from_sequence([round(weights[label] / total, 6) for label in EMOTION6_LABELS])


def make_results(
    n: int, *, prefix: str = "post", channels: int = 4, start: datetime | None = None, **kw: Any
) -> list[AnalysisResultV2]:
    """n results with ids PREFIX-00000.., round-robin channels, one second apart, negative score
    cycling through 0.05..0.95."""
    start = start or T0
    return [
        make_result(
            f"{prefix}-{i:05d}",
            channel=f"channel-{i % channels}",
            negative=round(0.05 + 0.9 * ((i * 37) % 100) / 99, 4),
            created_at=start + timedelta(seconds=i),
            **kw,
        )
        for i in range(n)
    ]


def make_alert(
    channel: str = "channel-1",
    *,
    window_start: datetime | None = None,
    window: timedelta = timedelta(minutes=5),
    kind: str = "negative_spike",
    alert_id: str | None = None,
    **overrides: Any,
) -> AlertV1:
    """A valid AlertV1 with the deterministic id channel:kind:window-start-epoch."""
    window_start = window_start or T0
    fields: dict[str, Any] = dict(
        alert_id=alert_id or f"{channel}:{kind}:{int(window_start.timestamp())}",
        channel=channel,
        kind=kind,
        window_start=window_start,
        window_end=window_start + window,
        created_at=window_start + window + timedelta(seconds=1),
        posts_in_window=40,
        negative_in_window=30,
        observed_negative_share=0.75,
        baseline_negative_share=0.3,
        p_value=0.001,
        effect_size=0.45,
        dominant_emotion="anger",
        previous_dominant_emotion="contentment",
        message=f"negative share in {channel} rose to 75% (baseline 30%)",
    )
    fields.update(overrides)
    return AlertV1(**fields)
