"""The Emotion6 head: training, and EW-MTCNN's evaluation protocol on Emotion6.

Protocol (EW-MTCNN, Lai, Wan, Zeng): stratified 10-fold cross-validation (strata = the six search
folders, shuffled with the seed), trained on nine folds, scored on the tenth; the six distribution
metrics of models.metrics (KL with eps = 1e-10) averaged over every image, plus top-1 accuracy: the
predicted most likely label is a most likely label of the human distribution (ties, 4.4% of the
images, count for each tied label).

Training: the pooled frozen backbone feature -> DistributionHead over the seven labels (no prior layer:
the Plutchik-wheel prior of models.emotion6 scored worse in CV, see README), loss (1 - lambda) CE +
lambda KL with lambda = 0.85, AdamW with a cosine schedule, mirrored images as augmentation; five such
heads from different seeds, averaged (models.distribution.DistributionEnsemble).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from torch import nn

from models.distribution import DistributionEnsemble, DistributionHead
from models.emotion6 import MIKELS_TO_EMOTION6, NUM_EMOTION6
from models.emotions import multitask_loss
from models.metrics import distribution_metrics

METRICS = ("chebyshev", "clark", "canberra", "kl", "cosine", "intersection", "accuracy")


@dataclass(frozen=True)
class Emotion6Config:
    seed: int = 0
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    lam: float = 0.85
    hidden_dim: int = 256
    dropout: float = 0.5
    members: int = 5

    def to_dict(self) -> dict:
        return asdict(self)


def new_head(in_dim: int, cfg: Emotion6Config) -> DistributionEnsemble:
    return DistributionEnsemble(
        cfg.members,
        in_dim=in_dim,
        hidden_dim=cfg.hidden_dim,
        dropout=cfg.dropout,
        num_labels=NUM_EMOTION6,
        use_prior=False,
    )


def train_emotion6(
    head: DistributionEnsemble,
    pooled: np.ndarray,
    pooled_flip: np.ndarray,
    targets: np.ndarray,
    cfg: Emotion6Config,
    seed: int | None = None,
) -> list[float]:
    """Every member from a fresh start on its own seed (``seed`` + member index); returns all the losses."""
    seed = cfg.seed if seed is None else seed
    losses = []
    for m, member in enumerate(head.members):
        torch.manual_seed(seed + m)
        for layer in member.modules():
            if layer is not member and hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        losses += _train_member(member, pooled, pooled_flip, targets, cfg, np.random.default_rng(seed + m))
    head.eval()
    return losses


def _train_member(
    head: DistributionHead,
    pooled: np.ndarray,
    pooled_flip: np.ndarray,
    targets: np.ndarray,
    cfg: Emotion6Config,
    rng: np.random.Generator,
) -> list[float]:
    x, xf, t = (torch.as_tensor(np.asarray(a, np.float32)) for a in (pooled, pooled_flip, targets))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    losses = []
    head.train()
    for _ in range(cfg.epochs):
        for idx in np.array_split(rng.permutation(len(t)), max(1, len(t) // cfg.batch_size)):
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5)[:, None]
            loss = multitask_loss(head(torch.where(flip, xf[idx], x[idx])), t[idx], lam=cfg.lam)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        schedule.step()
    head.eval()
    return losses


def predict(head: nn.Module, pooled: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head(torch.as_tensor(np.asarray(pooled, np.float32))).numpy()


def top1_accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    """Share of images whose predicted top label is a top label of the human distribution."""
    hit = target[np.arange(len(target)), pred.argmax(1)] >= target.max(1) - 1e-6
    return float(hit.mean())


def score(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    return {**distribution_metrics(pred, target), "accuracy": top1_accuracy(pred, target)}


def mikels_as_emotion6(mikels: np.ndarray) -> np.ndarray:
    """A Mikels distribution [N, 8] through the documented mapping (models.emotion6); neutral gets 0."""
    return np.asarray(mikels, np.float64) @ MIKELS_TO_EMOTION6.double().numpy()


def cross_validate(
    pooled: np.ndarray,
    pooled_flip: np.ndarray,
    targets: np.ndarray,
    strata: np.ndarray,
    cfg: Emotion6Config = Emotion6Config(),
    folds: int = 10,
    progress=lambda msg: None,
) -> tuple[dict[str, float], list[dict[str, float]], np.ndarray]:
    """Pooled over every held-out image, per fold, and the out-of-fold predictions [N, 7]."""
    preds = np.zeros(targets.shape, np.float64)
    per_fold = []
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    for fold, (train_idx, test_idx) in enumerate(splitter.split(pooled, strata)):
        head = new_head(pooled.shape[1], cfg)
        train_emotion6(head, pooled[train_idx], pooled_flip[train_idx], targets[train_idx], cfg)
        preds[test_idx] = predict(head, pooled[test_idx])
        per_fold.append(score(preds[test_idx], targets[test_idx]))
        progress(f"fold {fold}: KL {per_fold[-1]['kl']:.4f}, accuracy {per_fold[-1]['accuracy']:.4f}")
    return score(preds, targets), per_fold, preds


def score_shipped(heads, pooled: np.ndarray, targets: np.ndarray) -> dict[str, dict[str, float]]:
    """The shipped Emotion6 head on every image, and the shipped Mikels head through the documented mapping."""
    with torch.inference_mode():
        x = torch.as_tensor(np.asarray(pooled, np.float32))
        scores = {"Mikels head mapped": score(mikels_as_emotion6(heads.emotions(x).numpy()), targets)}
        if heads.emotion6 is not None:  # checkpoints before schema v2 have none
            scores = {"emotion6 head": score(heads.emotions6(x).numpy(), targets), **scores}
    return scores
