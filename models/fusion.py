"""MIRA fusion head (Cheng & Zhang 2025): retrieved emotion sentences attend over the image.

Text features of the k retrieved sentences are the QUERIES, the positions of the image feature map
are the KEYS and VALUES (scaled dot-product cross-attention):

    Q = W_q LN(T)   (k x d),   K = W_k LN(X),  V = W_v LN(X)   (HW x d)
    A = softmax(Q K^T / sqrt(d))                                (k x HW)
    H = LN(Q + Dropout(A V))                                    (residual of the query)
    h = masked mean of H over the k sentences  ->  Dropout  ->  FC  ->  logits (num_classes)

The post's own text (``post_text=True``): its text-encoder feature p [B, D] becomes one more query,
q_post = W_q LN(p) + m with a learned marker m (so the head can tell the post's words from a retrieved
sentence), with ``post_mask`` [B] saying which posts have usable text. A post without text is masked
out exactly like a padding sentence, so it gets the image-and-retrieval prediction unchanged.

Ablations (``mode``):
    "full"        the above;
    "image_only"  mean-pooled image feature -> LN -> Linear(d) -> GELU -> Dropout -> FC (no text at all);
    "text_only"   the post's text alone: LN -> Linear(d) -> GELU -> Dropout -> FC (no image, no retrieval);
    "concat"      [image branch of "image_only" ; masked mean of the projected text] -> FC;
    k = 1         is "full" fed a single sentence, k = 0 "full" with the post text only (no separate mode).

Kept small on purpose (trained on ~900 images): one attention head, d = 256 by default.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

__all__ = ["MiraHead", "MiraMode", "flatten_feature_map", "masked_mean"]

MiraMode = Literal["full", "image_only", "text_only", "concat"]
MiraPooling = Literal["mean", "slots"]
_MODES = ("full", "image_only", "text_only", "concat")


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
            text_mask [B, k] bool (True = real sentence, False = padding), return_attention,
            post_text [B, text_dim], post_mask [B] bool)
    -> logits [B, num_classes], or (logits, attention [B, k (+1), HW]) when ``return_attention``
    (attention is None in "image_only" / "text_only" mode; rows of masked queries are zeroed; the
    post's query is the last row when the head reads post text).
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
        post_text: bool = False,
        pooling: MiraPooling = "mean",
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if mode == "text_only" and not post_text:
            raise ValueError('mode "text_only" needs post_text=True')
        if pooling not in ("mean", "slots"):
            raise ValueError(f"pooling must be mean or slots, got {pooling!r}")
        self.mode, self.pooling = mode, pooling
        self.reads_post_text = post_text and mode != "image_only"
        self.text_dim, self.image_dim, self.hidden_dim = text_dim, image_dim, hidden_dim
        self.dropout = nn.Dropout(dropout)
        if mode in ("full", "concat", "text_only"):
            self.text_norm = nn.LayerNorm(text_dim)
            self.query = nn.Linear(text_dim, hidden_dim)
        if self.reads_post_text:
            self.post_marker = nn.Parameter(torch.randn(hidden_dim) * 0.02)
        if mode == "text_only":
            self.text_branch = nn.Sequential(nn.GELU(), nn.Dropout(dropout))
        elif mode == "full":
            self.image_norm = nn.LayerNorm(image_dim)
            self.key = nn.Linear(image_dim, hidden_dim)
            self.value = nn.Linear(image_dim, hidden_dim)
            self.out_norm = nn.LayerNorm(hidden_dim)
        if mode in ("image_only", "concat") or (mode == "full" and pooling == "slots"):
            self.image_branch = nn.Sequential(
                nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout)
            )
        slots = {"concat": 2, "full": (2 + self.reads_post_text) if pooling == "slots" else 1}.get(mode, 1)
        self.classifier = nn.Linear(hidden_dim * slots, num_classes)

    @property
    def feature_dim(self) -> int:
        """Size of the pooled feature returned by ``features`` (input of the classifier)."""
        return self.classifier.in_features

    def post_query(self, post_text: torch.Tensor) -> torch.Tensor:
        """The post's text feature [B, text_dim] -> its query [B, 1, d] (shared projection + marker)."""
        if post_text.ndim != 2 or post_text.shape[-1] != self.text_dim:
            raise ValueError(f"post_text must be [B, {self.text_dim}], got {tuple(post_text.shape)}")
        return (self.query(self.text_norm(post_text)) + self.post_marker).unsqueeze(1)

    def features(
        self,
        text_feats: torch.Tensor | None,
        feat_map: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        post_text: torch.Tensor | None = None,
        post_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Pooled fused feature [B, feature_dim] (before dropout/FC) and attention [B, k (+1), HW] or None."""
        image = flatten_feature_map(feat_map, self.image_dim)
        if self.mode == "image_only":
            return self.image_branch(image.mean(dim=1)), None
        batch = image.shape[0]
        if self.mode == "text_only":
            if post_text is None:
                raise ValueError('mode "text_only" needs post_text')
            pooled = self.text_branch(self.post_query(post_text).squeeze(1))
            return pooled * _as_mask(post_mask, batch, pooled).unsqueeze(-1).to(pooled.dtype), None
        if text_feats is None or text_feats.ndim != 3 or text_feats.shape[-1] != self.text_dim:
            raise ValueError(f"text_feats must be [B, k, {self.text_dim}]")
        if text_mask is not None and text_mask.shape != text_feats.shape[:2]:
            raise ValueError(f"text_mask {tuple(text_mask.shape)} must be {tuple(text_feats.shape[:2])}")
        k = text_feats.shape[1]
        queries = self.query(self.text_norm(text_feats))  # [B, k, d]
        if self.reads_post_text and self.pooling == "slots" and post_text is None:
            post_text, post_mask = text_feats.new_zeros(batch, self.text_dim), torch.zeros(batch, dtype=torch.bool)
        if self.reads_post_text and post_text is not None:
            if text_mask is None:
                text_mask = torch.ones(text_feats.shape[:2], dtype=torch.bool, device=text_feats.device)
            queries = torch.cat([queries, self.post_query(post_text)], dim=1)
            text_mask = torch.cat([text_mask, _as_mask(post_mask, batch, queries).unsqueeze(1)], dim=1)
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
        if self.pooling == "mean":
            return masked_mean(attended, text_mask), attention
        # slots: [retrieved sentences | the post's words | the whole image]; an empty slot is zeros
        sentence_mask = text_mask[:, :k] if text_mask is not None else None
        parts = [masked_mean(attended[:, :k], sentence_mask) if k else attended.new_zeros(batch, self.hidden_dim)]
        if self.reads_post_text:
            parts.append(attended[:, k] * text_mask[:, k].to(attended.dtype).unsqueeze(-1))
        parts.append(self.image_branch(flatten_feature_map(feat_map, self.image_dim).mean(dim=1)))
        return torch.cat(parts, dim=-1), attention

    def forward(
        self,
        text_feats: torch.Tensor | None,
        feat_map: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        return_attention: bool = False,
        post_text: torch.Tensor | None = None,
        post_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        pooled, attention = self.features(text_feats, feat_map, text_mask, post_text, post_mask)
        logits = self.classifier(self.dropout(pooled))
        return (logits, attention) if return_attention else logits


def _as_mask(mask: torch.Tensor | None, batch: int, like: torch.Tensor) -> torch.Tensor:
    """A [B] bool mask (None: every row valid)."""
    if mask is None:
        return torch.ones(batch, dtype=torch.bool, device=like.device)
    if mask.shape != (batch,):
        raise ValueError(f"post_mask must be [{batch}], got {tuple(mask.shape)}")
    return mask.to(device=like.device, dtype=torch.bool)
