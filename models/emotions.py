"""The Mikels emotion wheel and the EW-MTCNN prior layer and loss (Lai, Wan, Zeng).

Wheel order (from ``schemas.emotions``): anger, disgust, sadness, fear, excitement, awe,
contentment, amusement. The wheel is circular: amusement sits next to anger.

Formulas (see /work/shared/ARCHITECTURE.md):

* wheel distance      d(i, j) = min(|i - j|, 8 - |i - j|)
* emotion prior       v_mu[j] = exp(-d(mu, j)^2 / (2 sigma^2)) / sum_k exp(-d(mu, k)^2 / (2 sigma^2)),
                      sigma = 0.6  (fear -> fear 0.664, sadness/excitement 0.166, ...)
* prior layer         p = sum_mu f_mu v_mu            (f = softmax output, p stays a distribution)
* multi-task loss     L = (1 - lambda) CE + lambda KL, lambda = 0.7
"""

from __future__ import annotations

import torch
from torch import nn

from schemas.emotions import MIKELS_EMOTIONS, POSITIVE_EMOTIONS

__all__ = [
    "MIKELS_EMOTIONS",
    "NUM_EMOTIONS",
    "POSITIVE_MASK",
    "POLARITY_SIGN",
    "KL_EPS",
    "emotion_index",
    "wheel_distance",
    "wheel_distance_matrix",
    "wheel_prior",
    "wheel_prior_matrix",
    "PriorLayer",
    "kl_divergence",
    "multitask_loss",
    "polarity_from_emotions",
]

NUM_EMOTIONS: int = len(MIKELS_EMOTIONS)
KL_EPS: float = 1e-10

#: 1.0 for the positive emotions (excitement, awe, contentment, amusement), 0.0 otherwise.
POSITIVE_MASK: torch.Tensor = torch.tensor([1.0 if e in POSITIVE_EMOTIONS else 0.0 for e in MIKELS_EMOTIONS])
#: +1 for positive emotions, -1 for negative ones (2 * POSITIVE_MASK - 1).
POLARITY_SIGN: torch.Tensor = 2.0 * POSITIVE_MASK - 1.0


def emotion_index(name_or_index: str | int) -> int:
    """Wheel position (0..7) of an emotion given by name (case-insensitive) or by index."""
    if isinstance(name_or_index, str):
        name = name_or_index.strip().lower()
        if name not in MIKELS_EMOTIONS:
            raise ValueError(f"unknown emotion {name_or_index!r}; expected one of {MIKELS_EMOTIONS}")
        return MIKELS_EMOTIONS.index(name)
    index = int(name_or_index)
    if index != name_or_index or not 0 <= index < NUM_EMOTIONS:
        raise ValueError(f"emotion index must be an integer in [0, {NUM_EMOTIONS}), got {name_or_index!r}")
    return index


def wheel_distance(i: str | int, j: str | int) -> int:
    """Circular distance on the 8-emotion wheel: min(|i - j|, 8 - |i - j|), in 0..4."""
    diff = abs(emotion_index(i) - emotion_index(j))
    return min(diff, NUM_EMOTIONS - diff)


def wheel_distance_matrix() -> torch.Tensor:
    """8 x 8 integer matrix D[i, j] = wheel_distance(i, j)."""
    idx = torch.arange(NUM_EMOTIONS)
    diff = (idx[:, None] - idx[None, :]).abs()
    return torch.minimum(diff, NUM_EMOTIONS - diff)


def _check_sigma(sigma: float) -> None:
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")


def wheel_prior_matrix(sigma: float = 0.6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """8 x 8 matrix V; row mu is the prior v_mu of emotion mu.

    V[mu, j] = exp(-d(mu, j)^2 / (2 sigma^2)) / sum_k exp(-d(mu, k)^2 / (2 sigma^2)).
    Computed in float64, then cast to ``dtype``. Rows sum to 1; V is symmetric.
    """
    _check_sigma(sigma)
    d = wheel_distance_matrix().to(torch.float64)
    weights = torch.exp(-(d**2) / (2.0 * sigma**2))
    return (weights / weights.sum(dim=1, keepdim=True)).to(dtype)


def wheel_prior(emotion: str | int, sigma: float = 0.6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Length-8 prior v_mu of one emotion (normalised Gaussian of the wheel distance)."""
    return wheel_prior_matrix(sigma, dtype)[emotion_index(emotion)].clone()


class PriorLayer(nn.Module):
    """EW-MTCNN prior layer: p = sum_mu f_mu v_mu, i.e. p = f @ V (V rows are the wheel priors).

    ``f`` is a (batch x 8) probability distribution (softmax output); since each row of V sums to
    1, ``p`` is again a distribution. V is a fixed buffer (not trained).
    """

    def __init__(self, sigma: float = 0.6) -> None:
        super().__init__()
        self.sigma = float(sigma)
        self.register_buffer("prior", wheel_prior_matrix(sigma), persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-1] != NUM_EMOTIONS:
            raise ValueError(f"last dimension must be {NUM_EMOTIONS}, got {tuple(f.shape)}")
        return f @ self.prior.to(f.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


def kl_divergence(target: torch.Tensor, pred: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """Per-row KL(target || pred) = sum_j t_j (log(t_j + eps) - log(p_j + eps)).

    Terms with t_j = 0 contribute exactly 0 (0 log 0 = 0). Returns shape ``target.shape[:-1]``.
    """
    log_ratio = torch.log(target + eps) - torch.log(pred + eps)
    return torch.where(target > 0, target * log_ratio, torch.zeros_like(log_ratio)).sum(dim=-1)


def multitask_loss(
    pred: torch.Tensor,
    target_dist: torch.Tensor,
    labels: torch.Tensor | None = None,
    lam: float = 0.7,
    eps: float = KL_EPS,
    inputs_are_logits: bool = False,
) -> torch.Tensor:
    """EW-MTCNN multi-task loss, averaged over the batch.

        L = (1 - lam) * CE + lam * KL
        CE = -log(p[y] + eps)                             y = labels, or argmax(target_dist)
        KL = sum_j t_j (log(t_j + eps) - log(p_j + eps))  (see ``kl_divergence``)

    ``pred`` is the predicted distribution p (normally the PriorLayer output), batch x 8.
    With ``inputs_are_logits=True`` it is taken as logits and p = softmax(pred) (computed with
    log_softmax, so CE has no eps there; no prior layer is applied). lam = 0 gives pure CE, lam = 1 pure KL.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if pred.shape != target_dist.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target_dist.shape)} differ in shape")
    if labels is None:
        labels = target_dist.argmax(dim=-1)
    if inputs_are_logits:
        log_p = torch.log_softmax(pred, dim=-1)
        p = log_p.exp()
    else:
        p = pred
        log_p = torch.log(pred + eps)
    ce = -log_p.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    kl = kl_divergence(target_dist, p, eps)
    return ((1.0 - lam) * ce + lam * kl).mean()


def polarity_from_emotions(dist: torch.Tensor) -> torch.Tensor:
    """(... x 8) emotion distribution -> (... x 2) [positive, negative] by summing the halves."""
    if dist.shape[-1] != NUM_EMOTIONS:
        raise ValueError(f"last dimension must be {NUM_EMOTIONS}, got {tuple(dist.shape)}")
    mask = POSITIVE_MASK.to(dtype=dist.dtype, device=dist.device)
    positive = (dist * mask).sum(dim=-1)
    negative = (dist * (1.0 - mask)).sum(dim=-1)
    return torch.stack([positive, negative], dim=-1)
