"""AnalysisResultV2 (per post) and AlertV1 (per channel), the output contracts.

AnalysisResultV2 (schema_version 2) is what the analyzer writes since three-way polarity: positive /
neutral / negative probabilities, the measured Emotion6 distribution beside the Mikels one, and how the
post's own words moved the verdict. AnalysisResultV1 (two-way) stays parseable for stored records
(``parse_result`` reads either); no code writes it any more. README: "Result schema v2".
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, ClassVar, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.emotions import EMOTION6_LABELS, MIKELS_EMOTIONS, Emotion, Emotion6, Polarity, Polarity3
from schemas.posts import Identifier, PostV1

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class PolarityProbs(_Model):
    """Two-way probabilities of AnalysisResultV1 (stored records only)."""

    positive: Probability
    negative: Probability


class PolarityProbs3(_Model):
    """Three-way probabilities (sum to 1): what the post takes, or that it takes no side (neutral)."""

    positive: Probability
    neutral: Probability
    negative: Probability

    def verdict(self) -> Polarity3:
        values = {"positive": self.positive, "neutral": self.neutral, "negative": self.negative}
        return max(values, key=values.__getitem__)  # type: ignore[return-value]


class _LabelDistribution(_Model):
    """Probabilities over a fixed label set, one field per label, in ``LABELS`` order."""

    LABELS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_sequence(cls, values) -> Self:
        values = [float(v) for v in values]
        if len(values) != len(cls.LABELS):
            raise ValueError(f"need {len(cls.LABELS)} values, got {len(values)}")
        return cls(**dict(zip(cls.LABELS, values)))

    def as_list(self) -> list[float]:
        return [getattr(self, name) for name in self.LABELS]

    def dominant(self) -> str:
        values = self.as_list()
        return self.LABELS[max(range(len(values)), key=values.__getitem__)]


class EmotionDistribution(_LabelDistribution):
    """Probabilities over the 8 Mikels emotions, in wheel order."""

    LABELS: ClassVar[tuple[str, ...]] = tuple(MIKELS_EMOTIONS)

    anger: Probability
    disgust: Probability
    sadness: Probability
    fear: Probability
    excitement: Probability
    awe: Probability
    contentment: Probability
    amusement: Probability


class Emotion6Distribution(_LabelDistribution):
    """Probabilities over Emotion6's labels (Ekman's six + neutral): the distribution measured against human
    judgements (moodwatch eval emotion6), and the one the dashboards show."""

    LABELS: ClassVar[tuple[str, ...]] = tuple(EMOTION6_LABELS)

    anger: Probability
    disgust: Probability
    fear: Probability
    joy: Probability
    sadness: Probability
    surprise: Probability
    neutral: Probability


class TextInfluence(_Model):
    """Whether the post's own words were read, and how far they moved the verdict.

    ``shift`` is the total variation distance between the final polarity probabilities with and without
    the text (0 when the text was not used); ``changed_verdict``: without the text the verdict would differ.
    """

    status: Literal["used", "no_text", "unsupported_language", "not_latin_script"]
    shift: Probability = 0.0
    polarity_without_text: Polarity3 | None = None
    changed_verdict: bool = False


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
    """A retrieved emotion sentence: the 'why' behind the polarity.

    ``similarity``: cosine similarity of the image to the sentence; ``in_fusion``: the fusion head read it
    (one of the top retrieval_k by similarity); ``support``: the post's (verdict-consistent) Mikels
    probability of the sentence's emotion, by which the shown sentences are ranked (pipelines.evidence).
    The last two are absent in v1 records.
    """

    text: str
    emotion: Emotion
    similarity: float
    source: str
    in_fusion: bool | None = None
    support: Probability | None = None


class ImageAnalysis(_Model):
    """What the Analyzer says about one post's image (and text), before post metadata is attached."""

    polarity: Polarity3
    polarity_probs: PolarityProbs3
    emotions: EmotionDistribution
    dominant_emotion: Emotion
    emotion6: Emotion6Distribution
    dominant_emotion6: Emotion6
    text_influence: TextInfluence
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
    """The two-way result written before schema v2; kept so that stored records still parse."""

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


class AnalysisResultV2(_Model):
    schema_version: Literal[2] = 2
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
    polarity: Polarity3
    polarity_probs: PolarityProbs3
    negative_score: Probability
    emotions: EmotionDistribution  # Mikels wheel: drives regions and evidence ranking; not measured (README)
    dominant_emotion: Emotion
    emotion6: Emotion6Distribution  # measured on Emotion6 (README, "Emotion output"); what dashboards show
    dominant_emotion6: Emotion6
    text_influence: TextInfluence
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
    ) -> AnalysisResultV2:
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
            emotion6=analysis.emotion6,
            dominant_emotion6=analysis.dominant_emotion6,
            text_influence=analysis.text_influence,
            regions=analysis.regions,
            evidence=analysis.evidence,
            model_versions=model_versions,
            timings=timings,
            thumbnail=thumbnail,
        )


def parse_result(raw: bytes | str | dict) -> AnalysisResultV1 | AnalysisResultV2:
    """A stored or streamed result of either schema version."""
    data = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version == 2:
        return AnalysisResultV2.model_validate(data)
    if version == 1:
        return AnalysisResultV1.model_validate(data)
    raise ValueError(f"unknown result schema_version {version!r} (known: 1, 2)")


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
