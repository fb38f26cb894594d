"""`moodwatch eval mvsa`: three-way polarity of image + text posts on MVSA-Single (CLMLF's split).

Everything trainable is trained on the train split only and scored on dev (the test part is held
out): the aligned image encoder (contrastive, image vs the post's own text), the Mikels distribution
head (its targets from retrieved sentences, as in pipelines.train, on the positive and negative
posts) and, per row, the polarity head:

    image only                   pooled image -> MLP                      (no text, no retrieval)
    text only                    the post's text -> MLP                   (no image, no retrieval)
    image + retrieval, no text   MIRA over the retrieved sentences        (the v1 analysis)
    fused, no retrieval          the post's words as the only query + the image slot
    fused + retrieval            what ships: retrieved sentences + post text + image

Scores: accuracy, weighted F1 (CLMLF's metrics) and macro F1; for the fused row also the agreement of
the shown evidence with the verdict (pipelines.evidence), next to what plain top-k by similarity gives.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from models.moodnet import MoodHeads
from pipelines.evidence import evidence_agreement
from pipelines.features import FeatureCache
from pipelines.polarity import PolarityData, polarity_probs, train_polarity
from pipelines.retrieval import SentenceDatabase
from pipelines.train import TrainConfig, emotion_targets, train_aligner, train_distribution

FUSED = "fused + retrieval (k=3)"
ROWS = {
    "image only": {"mira_mode": "image_only"},
    "text only": {"mira_mode": "text_only", "retrieval_k": 0},
    "image + retrieval (k=3), no text": {"mira_mode": "full", "use_text": False},
    "fused, no retrieval": {"mira_mode": "full", "retrieval_k": 0},
    FUSED: {"mira_mode": "full"},
}


def polarity_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = np.asarray(probs).argmax(1)
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "weighted_f1": float(f1_score(labels, pred, average="weighted", labels=[0, 1, 2], zero_division=0)),
        "macro_f1": float(f1_score(labels, pred, average="macro", labels=[0, 1, 2], zero_division=0)),
    }


def as_two_way(cache: FeatureCache) -> FeatureCache:
    """The positive and negative posts with Twitter I's label convention (1 = positive), for the trainers
    written for it (aligner targets, Mikels distribution targets)."""
    keep = np.flatnonzero(cache.labels != 1)
    two = cache.subset(keep)
    two.labels = (two.labels == 0).astype(int)
    return two


def train_support(cache: FeatureCache, db: SentenceDatabase, cfg: TrainConfig) -> MoodHeads:
    """Aligner (image vs the post's text) and Mikels distribution head, trained on ``cache`` only."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    heads = MoodHeads(cfg.heads)
    train_aligner(heads, cache, cfg, rng)
    two = as_two_way(cache)
    train_distribution(heads, two, emotion_targets(heads, db, two, cfg), cfg, rng)
    return heads.eval()


def evaluate_mvsa(
    train: FeatureCache, dev: FeatureCache, db: SentenceDatabase, cfg: TrainConfig, progress=lambda msg: None
) -> dict[str, dict[str, float]]:
    """Train on ``train``, score every row of ROWS on ``dev``; the fused row also gets evidence agreement."""
    progress("aligned encoder and Mikels distribution head on the train split")
    support = train_support(train, db, cfg)
    table: dict[str, dict[str, float]] = {}
    for row, spec in ROWS.items():
        progress(row)
        spec = dict(spec)
        use_text = spec.pop("use_text", True)
        row_cfg = replace(cfg, heads=replace(cfg.heads, **spec))
        torch.manual_seed(cfg.seed)
        heads = MoodHeads(row_cfg.heads)
        heads.aligner.load_state_dict(support.aligner.state_dict())
        heads.distribution.load_state_dict(support.distribution.state_dict())
        train_data, dev_data = PolarityData.from_posts(train, use_text), PolarityData.from_posts(dev, use_text)
        train_polarity(heads.eval(), db, train_data, row_cfg, np.random.default_rng(cfg.seed))
        probs = polarity_probs(heads, db, dev_data)
        table[row] = polarity_scores(dev_data.labels, probs.numpy())
        if row == FUSED:
            table["evidence agreement (fused, dev)"] = evidence_agreement(heads, db, dev_data.pooled, probs)
    return table


def score_shipped(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache) -> dict[str, float]:
    """The shipped heads, untrained further, on every post of ``cache`` (polarity before region fusion)."""
    data = PolarityData.from_posts(cache)
    probs = polarity_probs(heads, db, data)
    agreement = evidence_agreement(heads, db, data.pooled, probs)
    return {
        **polarity_scores(data.labels, probs.numpy()),
        "evidence_top1": agreement["top1"],
        "evidence_majority": agreement["majority"],
        "evidence_mean_similarity": agreement["mean_similarity"],
    }
