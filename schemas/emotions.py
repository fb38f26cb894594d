"""The Mikels emotion vocabulary shared by every contract (wheel order matters)."""

from typing import Literal

MIKELS_EMOTIONS: tuple[str, ...] = (
    "anger",
    "disgust",
    "sadness",
    "fear",
    "excitement",
    "awe",
    "contentment",
    "amusement",
)
POSITIVE_EMOTIONS = frozenset({"amusement", "awe", "contentment", "excitement"})
NEGATIVE_EMOTIONS = frozenset({"anger", "disgust", "fear", "sadness"})

Emotion = Literal["anger", "disgust", "sadness", "fear", "excitement", "awe", "contentment", "amusement"]
Polarity = Literal["positive", "negative"]

#: Emotion6 (Peng et al. 2015): Ekman's six basic emotions plus neutral, the label set of the measured
#: emotion distribution (what the dashboards show; see README "Emotion output").
EMOTION6_LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
Emotion6 = Literal["anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral"]
#: Three-way post polarity (index order of the polarity heads).
POLARITY3: tuple[str, ...] = ("positive", "neutral", "negative")
Polarity3 = Literal["positive", "neutral", "negative"]
