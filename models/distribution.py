"""EW-MTCNN emotion-distribution head (Lai, Wan, Zeng).

    x = pooled image feature [B, C]  (optionally concatenated with the MIRA attended feature [B, E])
    f = softmax(MLP(x))              8 Mikels emotions, wheel order
    p = PriorLayer(f) = f @ V        V rows = wheel priors, sigma = 0.6 (see models.emotions)

Train p with ``models.emotions.multitask_loss`` ((1 - lambda) CE + lambda KL, lambda = 0.7).

The same head serves another label set (``num_labels``, e.g. Emotion6's seven, models.emotion6) with a
given prior matrix or none.
"""

from __future__ import annotations

import torch
from torch import nn

from models.emotions import NUM_EMOTIONS, PriorLayer

__all__ = ["DistributionEnsemble", "DistributionHead", "FixedPrior"]


class DistributionHead(nn.Module):
    """MLP -> 8 (``num_labels``) logits -> softmax f -> PriorLayer (or ``prior_matrix``, or none) -> p.

    forward(image_feat [B, C] (a [B, C, H, W] map is mean-pooled first), extra [B, extra_dim] or None,
            return_f) -> p [B, 8], or (p, f) when ``return_f``.
    ``use_prior=False`` skips the prior layer (p = f), for the ablation.
    """

    def __init__(
        self,
        in_dim: int = 1280,
        extra_dim: int = 0,
        hidden_dim: int = 256,
        dropout: float = 0.2,
        sigma: float = 0.6,
        use_prior: bool = True,
        num_labels: int = NUM_EMOTIONS,
        prior_matrix: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if use_prior and prior_matrix is None and num_labels != NUM_EMOTIONS:
            raise ValueError(f"the Mikels wheel prior has {NUM_EMOTIONS} labels; give prior_matrix or use_prior=False")
        self.in_dim, self.extra_dim, self.num_labels = in_dim, extra_dim, num_labels
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim + extra_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim + extra_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_labels),
        )
        if not use_prior:
            self.prior: nn.Module = nn.Identity()
        elif prior_matrix is not None:
            self.prior = FixedPrior(prior_matrix)
        else:
            self.prior = PriorLayer(sigma)

    def forward(
        self,
        image_feat: torch.Tensor,
        extra: torch.Tensor | None = None,
        return_f: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if image_feat.ndim == 4:
            image_feat = image_feat.mean(dim=(2, 3))
        if image_feat.ndim != 2 or image_feat.shape[1] != self.in_dim:
            raise ValueError(f"image_feat must be [B, {self.in_dim}], got {tuple(image_feat.shape)}")
        if self.extra_dim:
            if extra is None or extra.shape != (image_feat.shape[0], self.extra_dim):
                raise ValueError(f"extra must be [B, {self.extra_dim}]")
            image_feat = torch.cat([image_feat, extra], dim=-1)
        elif extra is not None:
            raise ValueError("extra given but the head was built with extra_dim=0")
        f = self.mlp(image_feat).softmax(dim=-1)
        p = self.prior(f)
        return (p, f) if return_f else p


class FixedPrior(nn.Module):
    """p = f @ V for a given row-stochastic V [L, L] (a fixed buffer)."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"prior matrix must be square, got {tuple(matrix.shape)}")
        self.register_buffer("prior", matrix.float(), persistent=False)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.prior.to(f.dtype)


class DistributionEnsemble(nn.Module):
    """The mean of ``members`` independently trained DistributionHeads (each a distribution, so the mean is one).

    forward(image_feat [B, C]) -> p [B, num_labels]. Averaging a few small heads trained from different
    seeds lowers the variance that a single head trained on ~1,250 images has (measured on Emotion6)."""

    def __init__(self, members: int = 5, **head_kwargs) -> None:
        super().__init__()
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members = nn.ModuleList(DistributionHead(**head_kwargs) for _ in range(members))

    def forward(self, image_feat: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(image_feat) for member in self.members]).mean(dim=0)
