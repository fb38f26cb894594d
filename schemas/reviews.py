"""ReviewV1 (a moderator's decision on one post) and ChannelThresholdsV1 (per-channel alert thresholds).

Both indices are append-only audit trails: every review and every threshold change is a new
document with a fresh id; nothing is ever overwritten. The latest document per post (reviews) or
per channel (thresholds) is the one in force.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS
from schemas.posts import Identifier

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
# A person's label may say "neutral" even where the model is binary (MVSA-style three-way labels).
Verdict = Literal["positive", "neutral", "negative"]
ReviewAction = Literal["confirm", "overturn", "escalate"]
Role = Literal["viewer", "reviewer", "admin"]
# Reviewer names come from a login or an auth proxy (e-mail addresses, OIDC subjects): printable, short.
Principal = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
Note = Annotated[str, StringConstraints(max_length=2000)]
# A dominant emotion as the model or a person names it: a Mikels emotion, or an Emotion6 label
# (Peng et al. 2015: anger, disgust, fear, joy, sadness, surprise, neutral) for models that report those.
EMOTION_LABELS = frozenset(MIKELS_EMOTIONS) | {"joy", "surprise", "neutral"}
EmotionLabel = Annotated[str, StringConstraints(pattern=r"^(" + "|".join(sorted(EMOTION_LABELS)) + r")$")]
_LEANS_POSITIVE = POSITIVE_EMOTIONS | {"joy"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ReviewV1(_Model):
    """One decision by one person on one post, with the model's verdict it judged."""

    schema_version: Literal[1] = 1
    review_id: Identifier  # fresh per review: a second review of a post is a new document
    post_id: Identifier
    channel: Identifier
    post_created_at: AwareDatetime
    reviewed_at: AwareDatetime
    reviewer: Principal
    reviewer_role: Role
    auth_method: Literal["session", "proxy"]
    action: ReviewAction
    model_polarity: Verdict
    model_negative_score: Probability
    model_dominant_emotion: EmotionLabel
    model_heads: str | None = None  # heads version that produced the verdict (precision per model version)
    human_polarity: Verdict | None = None
    human_dominant_emotion: EmotionLabel | None = None
    note: Note | None = None
    alert_ids: list[Identifier] = []  # alerts the post belonged to when it was reviewed
    image_ref: str

    @model_validator(mode="after")
    def _labels_match_action(self) -> ReviewV1:
        human = (self.human_polarity, self.human_dominant_emotion)
        if self.action == "confirm" and human != (self.model_polarity, self.model_dominant_emotion):
            raise ValueError("confirm keeps the model's polarity and dominant emotion")
        if self.action == "overturn":
            if None in human:
                raise ValueError("overturn needs the right polarity and dominant emotion")
            if human == (self.model_polarity, self.model_dominant_emotion):
                raise ValueError("overturn must change the polarity or the dominant emotion")
            if not emotion_fits_polarity(*reversed(human)):
                raise ValueError(f"{self.human_dominant_emotion} is not a {self.human_polarity} emotion")
        if self.action == "escalate" and human != (None, None):
            raise ValueError("escalate carries no label (a note says why)")
        return self

    @property
    def labelled(self) -> bool:
        """Whether this review says what the post is (confirm / overturn), not only that it needs more eyes."""
        return self.human_polarity is not None


def emotion_fits_polarity(emotion: str, polarity: str) -> bool:
    """anger, disgust, fear, sadness are negative; amusement, awe, contentment, excitement, joy positive;
    surprise and neutral fit any polarity, and a neutral post any emotion."""
    if polarity == "neutral":
        return True
    if emotion in NEGATIVE_EMOTIONS:
        return polarity == "negative"
    if emotion in _LEANS_POSITIVE:
        return polarity == "positive"
    return True


class ChannelThresholdsV1(_Model):
    """Spike-alert thresholds of one channel; a field left None uses the aggregator's global setting."""

    schema_version: Literal[1] = 1
    change_id: Identifier
    channel: Identifier
    changed_at: AwareDatetime
    changed_by: Principal
    spike_min_count: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    spike_alpha_arm: Annotated[float, Field(gt=0.0, le=0.05)] | None = None
    spike_min_effect: Annotated[float, Field(ge=0.1, le=1.0)] | None = None
    note: Note | None = None

    def overrides(self) -> dict[str, float | int]:
        """The DetectorConfig fields this change sets (min_count, alpha_arm, min_effect)."""
        pairs = (("min_count", self.spike_min_count), ("alpha_arm", self.spike_alpha_arm),
                 ("min_effect", self.spike_min_effect))  # fmt: skip
        return {name: value for name, value in pairs if value is not None}


class HumanLabel(_Model):
    polarity: Verdict
    dominant_emotion: EmotionLabel


class ModelVerdict(_Model):
    polarity: Verdict
    negative_score: Probability
    dominant_emotion: EmotionLabel
    heads: str | None = None


class ReviewExportV1(_Model):
    """One line of `moodwatch reviews export`: a post, where its image is, and the person's label.

    `image_ref` is the post's image reference (`file:PATH`, a URL, or `inline`); `thumbnail_b64` (the
    stored thumbnail, <= 256 px) lets `moodwatch train --reviews` use posts whose original is gone.
    """

    schema_version: Literal[1] = 1
    post_id: Identifier
    channel: Identifier
    created_at: AwareDatetime
    text: str | None = None
    image_ref: str
    thumbnail_format: str | None = None
    thumbnail_b64: str | None = None
    label: HumanLabel
    model: ModelVerdict
    review_id: Identifier
    reviewer: Principal
    reviewed_at: AwareDatetime
    action: Literal["confirm", "overturn"]
    note: Note | None = None
