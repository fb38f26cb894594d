"""MIRA fusion head (Cheng & Zhang 2025): retrieved emotion sentences attend over the image.

Text features of the k retrieved sentences are the QUERIES, the positions of the image feature map
are the KEYS and VALUES (scaled dot-product cross-attention):

    Q = W_q LN(T)   (k x d),   K = W_k LN(X),  V = W_v LN(X)   (HW x d)
    A = softmax(Q K^T / sqrt(d))                                (k x HW)
    H = LN(Q + Dropout(A V))                                    (residual of the query)
    h = masked mean of H over the k sentences  ->  Dropout  ->  FC  ->  logits (num_classes)

Ablations (``mode``):
    "full"        the above;
    "image_only"  mean-pooled image feature -> LN -> Linear(d) -> GELU -> Dropout -> FC;
    "concat"      [image branch of "image_only" ; masked mean of the projected text] -> FC;
    k = 1         is "full" fed a single sentence (no separate mode).

Kept small on purpose (trained on ~900 images): one attention head, d = 256 by default.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["MiraHead", "MiraMode", "flatten_feature_map", "masked_mean"]

MiraMode = Literal["full", "image_only", "concat"]
_MODES = ("full", "image_only", "concat")


def flatten_feature_map(feat_map: torch.Tensor, channels: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, HW, C]; a [B, HW, C] input is returned as is (checked against ``channels``)."""
    if feat_map.ndim == 4:
        if feat_map.shape[1] != channels:
            raise ValueError(f"feature map has {feat_map.shape[1]} channels, expected {channels}")
        return feat_map.flatten(2).transpose(1, 2)
    if feat_map.ndim == 3:
        if feat_map.shape[2] != channels:
            raise ValueError(f"feature map has {feat_map.shape[2]} channels, expected {channels}")
        return feat_map
    raise ValueError(f"feature map must be [B, C, H, W] or [B, HW, C], got {tuple(feat_map.shape)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of [B, k, D] over k, counting only positions where ``mask`` [B, k] is True.

    A row with no valid position gives a zero vector.
    """
    if mask is None:
        return x.mean(dim=1)
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


class MiraHead(nn.Module):
    """Cross-attention fusion head; see the module docstring for the exact computation.

    forward(text_feats [B, k, text_dim], feat_map [B, C, H, W] or [B, HW, C],
            text_mask [B, k] bool (True = real sentence, False = padding), return_attention)
    -> logits [B, num_classes], or (logits, attention [B, k, HW]) when ``return_attention``
    (attention is None in "image_only" mode; rows of masked sentences are zeroed).
    A masked sentence has no influence on the logits: queries attend independently and the
    pooling over k ignores it.
    """

    def __init__(
        self,
        text_dim: int = 384,
        image_dim: int = 1280,
        hidden_dim: int = 256,
        num_classes: int = 2,
        dropout: float = 0.1,
        mode: MiraMode = "full",
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.mode = mode
        self.text_dim, self.image_dim, self.hidden_dim = text_dim, image_dim, hidden_dim
        self.dropout = nn.Dropout(dropout)
        if mode in ("full", "concat"):
            self.text_norm = nn.LayerNorm(text_dim)
            self.query = nn.Linear(text_dim, hidden_dim)
        if mode == "full":
            self.image_norm = nn.LayerNorm(image_dim)
            self.key = nn.Linear(image_dim, hidden_dim)
            self.value = nn.Linear(image_dim, hidden_dim)
            self.out_norm = nn.LayerNorm(hidden_dim)
        else:
            self.image_branch = nn.Sequential(
                nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)
            )
        self.classifier = nn.Linear(hidden_dim * (2 if mode == "concat" else 1), num_classes)

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature returned by ``features`` (input of the classifier)."""
        return self.classifier.in_features

    def features(
        self,
        text_feats: torch.Tensor | None,
        feat_map: torch.Tensor,
        text_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled fused feature [B, feature_dim] (before dropout/FC) and attention [B, k, HW] or None."""
        image = flatten_feature_map(feat_map, self.image_dim)
        if self.mode == "image_only":
            return self.image_branch(image.mean(dim=1)), None
        if text_feats is None or text_feats.ndim != 3 or text_feats.shape[-1] != self.text_dim:
            raise ValueError(f"text_feats must be [B, k, {self.text_dim}]")
        if text_mask is not None and text_mask.shape != text_feats.shape[:2]:
            raise ValueError(f"text_mask {tuple(text_mask.shape)} must be {tuple(text_feats.shape[:2])}")
        queries = self.query(self.text_norm(text_feats))  # [B, k, d]
        if self.mode == "concat":
            pooled_text = masked_mean(queries, text_mask)
            return torch.cat([self.image_branch(image.mean(dim=1)), pooled_text], dim=-1), None
        image = self.image_norm(image)
        keys, values = self.key(image), self.value(image)  # [B, HW, d]
        scores = queries @ keys.transpose(1, 2) / math.sqrt(self.hidden_dim)  # [B, k, HW]
        attention = scores.softmax(dim=-1)
        attended = self.out_norm(queries + self.dropout(attention @ values))  # [B, k, d]
        if text_mask is not None:
            attention = attention * text_mask.to(attention.dtype).unsqueeze(-1)
        return masked_mean(attended, text_mask), attention

    def forward(
        self,
        text_feats: torch.Tensor | None,
        feat_map: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        pooled, attention = self.features(text_feats, feat_map, text_mask)
        logits = self.classifier(self.dropout(pooled))
        return (logits, attention) if return_attention else logits
