"""Evaluation metrics: label-distribution distances (Geng, LDL) and binary polarity scores.

Distribution metrics, per row, for prediction p and target t (then averaged over the batch):

* chebyshev     max_j |p_j - t_j|                              (distance, lower is better)
* clark         sqrt(sum_j (p_j - t_j)^2 / (p_j + t_j)^2)      (distance)
* canberra      sum_j |p_j - t_j| / (p_j + t_j)                (distance)
* kl            sum_j t_j log((t_j + eps) / (p_j + eps)), eps = 1e-10  (distance, KL(t || p))
* cosine        sum_j p_j t_j / (||p|| ||t||)                  (similarity, higher is better)
* intersection  sum_j min(p_j, t_j)                            (similarity)

Terms of the form 0/0 (p_j = t_j = 0) count as 0, and so do 0 log 0 terms.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.emotions import KL_EPS, kl_divergence

__all__ = ["distribution_metrics", "polarity_metrics", "roc_auc"]

ArrayLike = torch.Tensor | np.ndarray | Sequence


def _as_rows(x: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x), dtype=torch.float64)
    return t.unsqueeze(0) if t.ndim == 1 else t


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den with 0 where den == 0 (the 0/0 terms of Clark and Canberra)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def distribution_metrics(pred: ArrayLike, target: ArrayLike, eps: float = KL_EPS) -> dict[str, float]:
    """Batch means of chebyshev, clark, canberra, kl, cosine, intersection (see module docstring)."""
    p, t = _as_rows(pred), _as_rows(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    diff = p - t
    total = p + t
    norms = p.norm(dim=-1) * t.norm(dim=-1)
    per_row = {
        "chebyshev": diff.abs().amax(dim=-1),
        "clark": _safe_ratio(diff**2, total**2).sum(dim=-1).sqrt(),
        "canberra": _safe_ratio(diff.abs(), total).sum(dim=-1),
        "kl": kl_divergence(t, p, eps),
        "cosine": _safe_ratio((p * t).sum(dim=-1), norms),
        "intersection": torch.minimum(p, t).sum(dim=-1),
    }
    return {name: float(values.mean()) for name, values in per_row.items()}


def roc_auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """ROC AUC by the rank statistic (Mann-Whitney U), ties get average ranks.

    AUC = (sum of ranks of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg); NaN if one class is absent.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    start = 0
    while start < len(s):  # average rank (1-based) over each run of ties
        stop = start
        while stop + 1 < len(s) and sorted_s[stop + 1] == sorted_s[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def polarity_metrics(y_true: ArrayLike, prob_positive: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, macro_f1 (mean F1 of both classes, F1 = 0 when undefined) and auc.

    ``y_true`` is 1 for positive, 0 for negative; predicted positive iff prob_positive >= threshold.
    """
    y = np.asarray(y_true).astype(int).ravel()
    prob = np.asarray(prob_positive, dtype=np.float64).ravel()
    if y.shape != prob.shape or y.size == 0:
        raise ValueError(f"need equal, non-empty lengths, got {y.shape} and {prob.shape}")
    pred = (prob >= threshold).astype(int)
    f1s = []
    for cls in (0, 1):
        tp = int(np.sum((pred == cls) & (y == cls)))
        fp = int(np.sum((pred == cls) & (y != cls)))
        fn = int(np.sum((pred != cls) & (y == cls)))
        denom = 2 * tp + fp + fn
        f1s.append(2 * tp / denom if denom else 0.0)
    return {
        "accuracy": float(np.mean(pred == y)),
        "macro_f1": float(np.mean(f1s)),
        "auc": roc_auc(y, prob),
    }
