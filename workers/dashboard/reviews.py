"""Turning a reviewer's click into a ReviewV1, and an admin's form into a ChannelThresholdsV1."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.posts import Identifier
from schemas.reviews import ChannelThresholdsV1, EmotionLabel, Note, ReviewAction, ReviewV1, Verdict
from workers.dashboard.auth import User


class ReviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    post_id: Identifier
    action: ReviewAction
    polarity: Verdict | None = None  # overturn: the right polarity (default: the model's)
    dominant_emotion: EmotionLabel | None = None  # overturn: the right dominant emotion (default: the model's)
    note: Note | None = None


class ThresholdsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spike_min_count: int | None = None
    spike_alpha_arm: float | None = None
    spike_min_effect: float | None = None
    note: Note | None = None


def build_review(
    req: ReviewRequest, result: dict[str, Any], user: User, alert_ids: list[str], now: datetime
) -> ReviewV1:
    """The stored review: the model's verdict from the result document, the person's from the request.

    Raises pydantic.ValidationError when the labels do not fit the action (e.g. an overturn that changes nothing).
    """
    model = (result["polarity"], result["dominant_emotion"])
    human: tuple[str | None, str | None]
    if req.action == "confirm":
        human = model
    elif req.action == "overturn":
        human = (req.polarity or model[0], req.dominant_emotion or model[1])
    else:
        human = (None, None)
    return ReviewV1(
        review_id=uuid.uuid4().hex,
        post_id=result["post_id"],
        channel=result["channel"],
        post_created_at=result["created_at"],
        reviewed_at=now,
        reviewer=user.name,
        reviewer_role=user.role,
        auth_method=user.method,
        action=req.action,
        model_polarity=model[0],
        model_negative_score=result["negative_score"],
        model_dominant_emotion=model[1],
        model_heads=(result.get("model_versions") or {}).get("heads"),
        human_polarity=human[0],
        human_dominant_emotion=human[1],
        note=req.note or None,
        alert_ids=alert_ids,
        image_ref=result.get("image_ref") or "unknown",
    )


def build_thresholds(channel: str, req: ThresholdsRequest, user: User, now: datetime) -> ChannelThresholdsV1:
    return ChannelThresholdsV1(
        change_id=uuid.uuid4().hex, channel=channel, changed_at=now, changed_by=user.name,
        **req.model_dump(exclude_none=False),
    )  # fmt: skip
