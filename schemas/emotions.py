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
