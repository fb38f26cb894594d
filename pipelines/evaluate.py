"""`moodwatch eval twitter1`: the paper's protocol (stratified 5-fold, accuracy) with the ablations.

Rows (MIRA Table 3 and the AR fusion variants):
    frozen backbone + logistic regression   reference baseline
    image only / concatenation / one sentence (k=1) / full (k=3)   MIRA ablations
    AR: global only / max / sum (beta 0.3) / concat + linear        region fusion on the full model
Everything that is trained (aligner, heads, fusion) is trained on the training folds only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from models.metrics import polarity_metrics
from models.moodnet import MoodHeads
from models.regions import fuse_max, fuse_sum
from pipelines.evidence import evidence_agreement
from pipelines.features import FeatureCache
from pipelines.polarity import PolarityData, positive_share
from pipelines.retrieval import SentenceDatabase
from pipelines.train import (
    TrainConfig,
    mira_features,
    mira_probs,
    region_polarity,
    top_regions,
    train_concat_fusion,
    train_heads,
    with_mode,
)

ROWS = (
    "baseline: frozen backbone + logistic regression",
    "MIRA: image only",
    "MIRA: concatenation",
    "MIRA: one sentence (k=1)",
    "MIRA: full (k=3)",
    "AR fusion: global only",
    "AR fusion: max",
    "AR fusion: sum (beta=0.3)",
    "AR fusion: concat + linear",
)


@dataclass
class FoldResult:
    fold: int
    accuracy: dict[str, float] = field(default_factory=dict)
    auc: dict[str, float] = field(default_factory=dict)
    recall: dict[str, float] = field(default_factory=dict)
    evidence: dict[str, float] = field(default_factory=dict)


def aligner_recall(heads, cache: FeatureCache, ks=(1, 5, 10)) -> dict[str, float]:
    """Image -> caption retrieval recall@k among the held-out images' own captions."""
    with torch.inference_mode():
        img = heads.embed(torch.as_tensor(cache.pooled)).numpy()
    sims = img @ cache.caption_emb.T
    rank = (sims > sims[np.arange(len(sims)), np.arange(len(sims))][:, None]).sum(1)
    return {f"recall@{k}": float((rank < k).mean()) for k in ks}


def evaluate_fold(
    train: FeatureCache,
    test: FeatureCache,
    db: SentenceDatabase,
    cfg: TrainConfig,
    fold: int,
    progress=lambda msg: None,
    extra: PolarityData | None = None,
) -> FoldResult:
    result = FoldResult(fold)
    y = test.labels

    def record(row: str, prob_positive) -> None:
        m = polarity_metrics(y, np.asarray(prob_positive, dtype=np.float64))
        result.accuracy[row], result.auc[row] = m["accuracy"], m["auc"]

    baseline = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    baseline.fit(train.pooled, train.labels)
    record(ROWS[0], baseline.predict_proba(test.pooled)[:, 1])

    progress(f"fold {fold}: full model")
    full, _ = train_heads(train, db, cfg, extra=extra)
    result.recall = aligner_recall(full, test)
    for row, mode, k in ((ROWS[1], "image_only", None), (ROWS[2], "concat", None), (ROWS[3], "full", 1)):
        progress(f"fold {fold}: {row}")
        heads, _ = train_heads(train, db, with_mode(cfg, mode, k), base=full, extra=extra)
        record(row, positive_share(mira_probs(heads, db, test)))
    global_probs = _two_way(mira_probs(full, db, test))
    record(ROWS[4], global_probs[:, 0])
    record(ROWS[5], global_probs[:, 0])
    regions, mask = region_polarity(full, test)
    regions = regions * mask.unsqueeze(-1)  # padded regions contribute nothing
    counts = mask.sum(1)
    maxed = torch.stack([fuse_max(global_probs[i], regions[i][mask[i]]) for i in range(len(global_probs))])
    record(ROWS[6], maxed[:, 0])
    summed = torch.stack(
        [
            fuse_sum(global_probs[i], regions[i][mask[i]], beta=cfg.heads.region_beta) if counts[i] else global_probs[i]
            for i in range(len(global_probs))
        ]
    )
    record(ROWS[7], summed[:, 0])
    result.evidence = evidence_agreement(full, db, test.pooled, summed)
    fusion = train_concat_fusion(full, db, train, cfg, np.random.default_rng(cfg.seed))
    with torch.inference_mode():
        _, feats, fmask = top_regions(full, test, 8, cfg.heads.region_alpha)
        concat = fusion(mira_features(full, db, test), feats, fmask).softmax(-1)
    record(ROWS[8], concat[:, 0])
    return result


def _two_way(probs: torch.Tensor) -> torch.Tensor:
    """Three-way probabilities -> positive, negative renormalised (Twitter I is a binary benchmark)."""
    share = positive_share(probs)
    return torch.stack([share, 1 - share], dim=-1)


def cross_validate(
    cache: FeatureCache,
    db: SentenceDatabase,
    cfg: TrainConfig = TrainConfig(),
    folds: int = 5,
    progress=lambda msg: None,
    extra: PolarityData | None = None,
) -> list[FoldResult]:
    """Stratified k-fold on Twitter I; ``extra`` (posts of another data set) joins every fold's MIRA training."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    results = []
    for fold, (train_idx, test_idx) in enumerate(splitter.split(cache.pooled, cache.labels)):
        results.append(evaluate_fold(cache.subset(train_idx), cache.subset(test_idx), db, cfg, fold, progress, extra))
    return results


def summarise(results: list[FoldResult]) -> dict[str, dict[str, float]]:
    table = {}
    for row in ROWS:
        acc = [r.accuracy[row] for r in results]
        auc = [r.auc[row] for r in results]
        table[row] = {"accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc)), "auc": float(np.mean(auc))}
    recall_keys = results[0].recall.keys() if results else []
    table["aligner (held-out image->caption)"] = {
        k: float(np.mean([r.recall[k] for r in results])) for k in recall_keys
    }
    evidence_keys = results[0].evidence.keys() if results else []
    table["evidence agreement (AR sum verdict)"] = {
        k: float(np.mean([r.evidence[k] for r in results])) for k in evidence_keys
    }
    return table


def fused_polarity(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache) -> torch.Tensor:
    """What the analyzer decides for Twitter I images: MIRA, then AR sum fusion of the top-8 regions, as
    positive, negative [N, 2]."""
    global_probs = _two_way(mira_probs(heads, db, cache))
    regions, mask = region_polarity(heads, cache)
    return torch.stack(
        [
            fuse_sum(global_probs[i], regions[i][mask[i]], beta=heads.config.region_beta)
            if mask[i].any()
            else global_probs[i]
            for i in range(len(global_probs))
        ]
    )


def score_shipped(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache) -> dict[str, float]:
    """The shipped heads, untrained further, on every image of ``cache`` (label 1 = positive)."""
    fused = fused_polarity(heads, db, cache)
    metrics = polarity_metrics(cache.labels, fused[:, 0].numpy())
    agreement = evidence_agreement(heads, db, cache.pooled, fused)
    return {
        "accuracy": metrics["accuracy"],
        "auc": metrics["auc"],
        "evidence_top1": agreement["top1"],
        "evidence_majority": agreement["majority"],
        "evidence_mean_similarity": agreement["mean_similarity"],
    }
