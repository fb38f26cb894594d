"""AnalysisResultV1 (per post) and AlertV1 (per channel), the output contracts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.emotions import MIKELS_EMOTIONS, Emotion, Polarity
from schemas.posts import Identifier, PostV1

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PolarityProbs(_Model):
    positive: Probability
    negative: Probability


class EmotionDistribution(_Model):
    """Probabilities over the 8 Mikels emotions, in wheel order."""

    anger: Probability
    disgust: Probability
    sadness: Probability
    fear: Probability
    excitement: Probability
    awe: Probability
    contentment: Probability
    amusement: Probability

    @classmethod
    def from_sequence(cls, values) -> EmotionDistribution:
        values = [float(v) for v in values]
        if len(values) != len(MIKELS_EMOTIONS):
            raise ValueError(f"need {len(MIKELS_EMOTIONS)} values, got {len(values)}")
        return cls(**dict(zip(MIKELS_EMOTIONS, values)))

    def as_list(self) -> list[float]:
        return [getattr(self, name) for name in MIKELS_EMOTIONS]

    def dominant(self) -> Emotion:
        values = self.as_list()
        return MIKELS_EMOTIONS[max(range(len(values)), key=values.__getitem__)]  # type: ignore[return-value]


class Region(_Model):
    """An affective region: box in original-image pixels (x0, y0, x1, y1), x1/y1 exclusive."""

    x0: Annotated[int, Field(ge=0)]
    y0: Annotated[int, Field(ge=0)]
    x1: Annotated[int, Field(ge=1)]
    y1: Annotated[int, Field(ge=1)]
    score: Probability  # AR score sqrt((1-a) obj^2 + a senti^2)
    objectness: Probability
    senti: Probability
    dominant_emotion: Emotion
    polarity: Polarity

    @model_validator(mode="after")
    def _ordered(self) -> Region:
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError("region box must have x1 > x0 and y1 > y0")
        return self


class Evidence(_Model):
    """A retrieved emotion sentence: the 'why' behind the polarity."""

    text: str
    emotion: Emotion
    similarity: float
    source: str


class ImageAnalysis(_Model):
    """What the Analyzer says about one image, before post metadata is attached."""

    polarity: Polarity
    polarity_probs: PolarityProbs
    emotions: EmotionDistribution
    dominant_emotion: Emotion
    regions: list[Region]
    evidence: list[Evidence]
    image_width: Annotated[int, Field(ge=1)]
    image_height: Annotated[int, Field(ge=1)]


class ModelVersions(_Model):
    analyzer: str
    backend: Literal["local", "triton"]
    image_encoder: str
    text_encoder: str
    heads: str
    index: str
    region_proposals: str | None = None  # "learned@<version>" or "selective_search"; None when regions are off


class StageTimings(_Model):
    """Seconds spent per stage for this post (batch stages are divided evenly over the batch)."""

    fetch_seconds: float = 0.0
    decode_seconds: float = 0.0
    analyze_seconds: float = 0.0
    total_seconds: float = 0.0


class Thumbnail(_Model):
    """A small copy of the analysed image (long side <= 256 px, a few KB) that the dashboard shows without
    fetching the original again; region boxes are drawn over it by the page, so it stays clean.
    `data` (base64) is mapped as a non-indexed `binary` field: kept in _source, never searched."""

    format: Literal["webp", "jpeg"]
    width: Annotated[int, Field(ge=1, le=256)]
    height: Annotated[int, Field(ge=1, le=256)]
    data: Annotated[str, StringConstraints(min_length=1, max_length=200_000)] = Field(
        json_schema_extra={"es_mapping": {"type": "binary"}}
    )


class AnalysisResultV1(_Model):
    schema_version: Literal[1] = 1
    post_id: Identifier
    author_id: Identifier
    channel: Identifier
    created_at: AwareDatetime  # event time: the post's claim when within bounds, else when it was seen
    analyzed_at: AwareDatetime
    event_time_clamped: bool = False  # the claimed created_at was not trusted (too far ahead, or before the floor)
    claimed_created_at: str | None = None  # the producer's created_at, verbatim (ISO), when it was not trusted
    content_fingerprint: str | None = None  # PostV1.content_fingerprint(): what this post_id stands for
    lang: str | None = None
    text: str | None = None
    image_ref: str
    image_width: int
    image_height: int
    polarity: Polarity
    polarity_probs: PolarityProbs
    negative_score: Probability
    emotions: EmotionDistribution
    dominant_emotion: Emotion
    regions: list[Region]
    evidence: list[Evidence]
    model_versions: ModelVersions
    timings: StageTimings
    thumbnail: Thumbnail | None = None

    @classmethod
    def from_analysis(
        cls,
        post: PostV1,
        analysis: ImageAnalysis,
        *,
        analyzed_at: datetime,
        model_versions: ModelVersions,
        timings: StageTimings,
        created_at: datetime | None = None,
        thumbnail: Thumbnail | None = None,
    ) -> AnalysisResultV1:
        """``created_at``: the bounded event time when the post's own claim was not trusted."""
        clamped = created_at is not None and created_at != post.created_at
        return cls(
            post_id=post.post_id,
            author_id=post.author_id,
            channel=post.channel,
            created_at=created_at if clamped else post.created_at,
            analyzed_at=analyzed_at,
            event_time_clamped=clamped,
            claimed_created_at=post.created_at.isoformat() if clamped else None,
            content_fingerprint=post.content_fingerprint(),
            lang=post.lang,
            text=post.text,
            image_ref=post.image.describe() if post.image.b64 is None else "inline",
            image_width=analysis.image_width,
            image_height=analysis.image_height,
            polarity=analysis.polarity,
            polarity_probs=analysis.polarity_probs,
            negative_score=analysis.polarity_probs.negative,
            emotions=analysis.emotions,
            dominant_emotion=analysis.dominant_emotion,
            regions=analysis.regions,
            evidence=analysis.evidence,
            model_versions=model_versions,
            timings=timings,
            thumbnail=thumbnail,
        )


class AlertV1(_Model):
    schema_version: Literal[1] = 1
    alert_id: Identifier  # deterministic: channel + kind + window start, so re-emission is idempotent
    channel: Identifier
    kind: Literal["negative_spike", "emotion_shift"]
    window_start: AwareDatetime
    window_end: AwareDatetime
    created_at: AwareDatetime
    posts_in_window: Annotated[int, Field(ge=0)]
    negative_in_window: Annotated[int, Field(ge=0)]
    observed_negative_share: Probability
    baseline_negative_share: Probability
    p_value: Probability
    effect_size: float
    dominant_emotion: Emotion
    previous_dominant_emotion: Emotion | None = None
    message: str
