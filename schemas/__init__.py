"""Pydantic v2 contracts: PostV1 in, AnalysisResultV2 (V1 still parses) and AlertV1 out. Imports nothing of ours."""

from schemas.emotions import MIKELS_EMOTIONS, NEGATIVE_EMOTIONS, POSITIVE_EMOTIONS
from schemas.posts import ImageRef, PostError, PostV1, parse_post
from schemas.results import (
    AlertV1,
    AnalysisResultV1,
    AnalysisResultV2,
    Emotion6Distribution,
    EmotionDistribution,
    Evidence,
    ImageAnalysis,
    ModelVersions,
    PolarityProbs,
    PolarityProbs3,
    Region,
    StageTimings,
    TextInfluence,
    parse_result,
)

__all__ = [
    "MIKELS_EMOTIONS",
    "NEGATIVE_EMOTIONS",
    "POSITIVE_EMOTIONS",
    "ImageRef",
    "PostError",
    "PostV1",
    "parse_post",
    "AlertV1",
    "AnalysisResultV1",
    "AnalysisResultV2",
    "Emotion6Distribution",
    "EmotionDistribution",
    "Evidence",
    "ImageAnalysis",
    "ModelVersions",
    "PolarityProbs",
    "PolarityProbs3",
    "Region",
    "StageTimings",
    "TextInfluence",
    "parse_result",
]
