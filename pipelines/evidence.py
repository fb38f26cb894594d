"""Which retrieved sentences a moderator sees as the "why" of a verdict.

The fusion head reads the top ``retrieval_k`` sentences by similarity, but at cosine similarities
around 0.2 the nearest sentence often names an emotion of the other side (on held-out Twitter I
photos the top sentence's polarity agreed with the verdict for 0.627 of the images). So more
candidates are retrieved (``candidates``) and the ``shown`` ones are ranked by

    score_i = similarity_i + weight * log(p(emotion_i) + 1e-6)

where p is the post's Mikels distribution after it is made consistent with the verdict
(models.moodnet.calibrate_emotions): sentences whose emotion the model itself predicts come first,
similarity breaks ties and still orders sentences of equally likely emotions. Every shown sentence
keeps its similarity, whether the fusion head read it (``in_fusion``) and its ``support`` p(emotion_i).

Agreement (reported by the eval commands): a sentence agrees with a verdict when its emotion's
polarity is the verdict's side; a neutral verdict's side is where it leans (p(positive) vs
p(negative)), since no emotion sentence is neutral.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.emotions import POSITIVE_MASK
from models.moodnet import MoodHeads, calibrate_emotions
from pipelines.fitting import _tensor, retrieve
from pipelines.retrieval import SentenceDatabase

__all__ = [
    "EvidenceRanking",
    "agreement_rates",
    "evidence_agreement",
    "rank_evidence",
    "sentence_sides",
    "verdict_sides",
]

_POSITIVE = POSITIVE_MASK.numpy().astype(bool)


@dataclass(frozen=True)
class EvidenceRanking:
    candidates: int = 16  # sentences retrieved per image; the fusion head reads the first retrieval_k
    shown: int = 3  # sentences kept as evidence
    weight: float = 0.2  # weight of log p(emotion) against the cosine similarity


def rank_evidence(
    similarities: np.ndarray,
    emotion_ids: np.ndarray,
    emotions: np.ndarray,
    ranking: EvidenceRanking = EvidenceRanking(),
) -> np.ndarray:
    """Indices into the candidates of the ``shown`` sentences, best first (one image: [M], [M], [8])."""
    sims = np.asarray(similarities, np.float64)
    support = np.asarray(emotions, np.float64)[np.asarray(emotion_ids, int)]
    score = sims + ranking.weight * np.log(support + 1e-6)
    return np.argsort(-score, kind="stable")[: ranking.shown]


def verdict_sides(polarity: np.ndarray) -> np.ndarray:
    """[N, 3] (positive, neutral, negative) or [N, 2] -> [N] True where the verdict leans positive."""
    p = np.asarray(polarity, np.float64)
    return p[:, 0] >= p[:, -1]


def sentence_sides(emotion_ids: np.ndarray) -> np.ndarray:
    """Mikels emotion ids (any shape) -> True where the emotion is positive."""
    return _POSITIVE[np.asarray(emotion_ids, int)]


def agreement_rates(shown_emotion_ids: np.ndarray, polarity: np.ndarray) -> dict[str, float]:
    """top1: the first shown sentence agrees with the verdict; majority: most shown sentences do."""
    side = verdict_sides(polarity)[:, None]
    agrees = sentence_sides(shown_emotion_ids) == side  # [N, s]
    return {"top1": float(agrees[:, 0].mean()), "majority": float((agrees.mean(1) > 0.5).mean())}


def evidence_agreement(
    heads: MoodHeads,
    db: SentenceDatabase,
    pooled: np.ndarray,
    probs: torch.Tensor,
    ranking: EvidenceRanking = EvidenceRanking(),
) -> dict[str, float]:
    """Agreement with the verdict ``probs`` [N, 3 or 2] of the top-k by similarity (what v1 showed) and of the
    ranked evidence (what is shown now), with the mean similarity of each."""
    r = retrieve(heads, db, pooled, ranking.candidates)
    with torch.inference_mode():
        emotions = calibrate_emotions(heads.emotions(_tensor(pooled)), probs).numpy()
    shown = np.stack([rank_evidence(r.scores[i], r.emotion_ids[i], emotions[i], ranking) for i in range(len(probs))])
    shown_ids = np.take_along_axis(r.emotion_ids, shown, axis=1)
    before = agreement_rates(r.emotion_ids[:, : ranking.shown], probs.numpy())
    after = agreement_rates(shown_ids, probs.numpy())
    return {
        "top1_by_similarity": before["top1"],
        "majority_by_similarity": before["majority"],
        "top1": after["top1"],
        "majority": after["majority"],
        "mean_similarity_by_similarity": float(r.scores[:, : ranking.shown].mean()),
        "mean_similarity": float(np.take_along_axis(r.scores, shown, axis=1).mean()),
    }
