"""EW-MTCNN emotion-distribution head (Lai, Wan, Zeng).

    x = pooled image feature [B, C]  (optionally concatenated with the MIRA attended feature [B, E])
    f = softmax(MLP(x))              8 Mikels emotions, wheel order
    p = PriorLayer(f) = f @ V        V rows = wheel priors, sigma = 0.6 (see models.emotions)

Train p with ``models.emotions.multitask_loss`` ((1 - lambda) CE + lambda KL, lambda = 0.7).
"""

from __future__ import annotations

import torch
from torch import nn

from models.emotions import NUM_EMOTIONS, PriorLayer

__all__ = ["DistributionHead"]


class DistributionHead(nn.Module):
    """MLP -> 8 logits -> softmax f -> PriorLayer -> p.

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
    ) -> None:
        super().__init__()
        self.in_dim, self.extra_dim = in_dim, extra_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim + extra_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim + extra_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, NUM_EMOTIONS),
        )
        self.prior = PriorLayer(sigma) if use_prior else nn.Identity()

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
