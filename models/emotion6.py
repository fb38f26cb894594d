"""Emotion6's label set (Ekman's six + neutral) as a distribution-learning target: its wheel prior and
the documented relation to the Mikels wheel.

Prior (the EW-MTCNN prior layer, on another wheel): the six basic emotions sit where Plutchik's wheel
puts them on an 8-position circle (joy 0, fear 2, surprise 3, sadness 4, disgust 5, anger 6; trust and
anticipation have no Emotion6 label), so d(fear, surprise) = 1 and d(joy, sadness) = 4; neutral sits at
``neutral_distance`` from every emotion. v_mu[j] = exp(-d(mu, j)^2 / (2 sigma^2)), rows normalised.

Mikels -> Emotion6 (``MIKELS_TO_EMOTION6``, rows: Mikels wheel order): anger, disgust, fear, sadness map
to themselves; amusement, contentment, excitement to joy; awe to surprise. Mikels has no neutral, so a
Mikels distribution mapped this way puts 0 on neutral: the measured reason the product reports a
distribution of its own over Emotion6's labels instead (README, "Emotion output").
"""

from __future__ import annotations

import torch

from schemas.emotions import EMOTION6_LABELS, MIKELS_EMOTIONS

__all__ = ["EMOTION6_LABELS", "MIKELS_TO_EMOTION6", "NUM_EMOTION6", "emotion6_distance_matrix", "emotion6_prior_matrix"]

NUM_EMOTION6 = len(EMOTION6_LABELS)
_PLUTCHIK_POSITION = {"joy": 0, "fear": 2, "surprise": 3, "sadness": 4, "disgust": 5, "anger": 6}
_MIKELS_TARGET = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sadness",
    "amusement": "joy",
    "contentment": "joy",
    "excitement": "joy",
    "awe": "surprise",
}

MIKELS_TO_EMOTION6: torch.Tensor = torch.tensor(
    [[1.0 if EMOTION6_LABELS[j] == _MIKELS_TARGET[m] else 0.0 for j in range(NUM_EMOTION6)] for m in MIKELS_EMOTIONS]
)


def emotion6_distance_matrix(neutral_distance: float = 2.0) -> torch.Tensor:
    """7 x 7 distances: circular on Plutchik's 8-position wheel, ``neutral_distance`` to and from neutral."""
    d = torch.zeros(NUM_EMOTION6, NUM_EMOTION6, dtype=torch.float64)
    for i, a in enumerate(EMOTION6_LABELS):
        for j, b in enumerate(EMOTION6_LABELS):
            if a == b:
                continue
            if "neutral" in (a, b):
                d[i, j] = neutral_distance
            else:
                diff = abs(_PLUTCHIK_POSITION[a] - _PLUTCHIK_POSITION[b])
                d[i, j] = min(diff, 8 - diff)
    return d


def emotion6_prior_matrix(sigma: float = 0.6, neutral_distance: float = 2.0, dtype=torch.float32) -> torch.Tensor:
    """7 x 7 row-stochastic prior V (row mu = the prior of emotion mu), symmetric before normalisation."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    weights = torch.exp(-(emotion6_distance_matrix(neutral_distance) ** 2) / (2.0 * sigma**2))
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)
