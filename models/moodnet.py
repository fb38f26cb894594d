"""MoodHeads: every trainable head of moodwatch in one module, composed the way inference uses them.

Given the backbone's feature map X [B, C, h, w] (pooled x [B, C]) and the text-encoder features T
[B, k, D] of the k sentences retrieved for each image:

    polarity   = softmax(MiraHead(T, X))                            MIRA (index 0 positive, 1 negative)
    emotions   = DistributionHead(x)                                EW-MTCNN, prior layer inside
    region y_r = RegionScorer(RoIAlign(X, box_r))                   8-emotion distribution per region
    fused      = (1 - beta) polarity + beta mean_r(polarity(y_r))   AR "sum" fusion over the top-K regions

The emotion distribution is finally made consistent with the fused polarity by rescaling its
positive and negative halves to the fused polarity mass (``calibrate_emotions``), so a post never
reads "negative" with "awe" as its dominant emotion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.distribution import DistributionHead
from models.encoders import AlignedImageEncoder
from models.emotions import POSITIVE_MASK, polarity_from_emotions
from models.fusion import MiraHead
from models.regions import RegionScorer

POLARITY_CLASSES = ("positive", "negative")


@dataclass(frozen=True)
class HeadsConfig:
    image_dim: int = 1280
    text_dim: int = 384
    hidden_dim: int = 128
    mira_mode: str = "full"
    retrieval_k: int = 3
    region_beta: float = 0.3
    region_alpha: float = 0.6
    region_fusion: str = "sum"
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


class MoodHeads(nn.Module):
    def __init__(self, config: HeadsConfig = HeadsConfig()) -> None:
        super().__init__()
        self.config = config
        self.aligner = AlignedImageEncoder(in_dim=config.image_dim, out_dim=config.text_dim, hidden_dim=512)
        self.mira = MiraHead(
            text_dim=config.text_dim, image_dim=config.image_dim, hidden_dim=config.hidden_dim,
            dropout=config.dropout, mode=config.mira_mode,  # type: ignore[arg-type]
        )
        self.distribution = DistributionHead(in_dim=config.image_dim, dropout=config.dropout)
        self.region_scorer = RegionScorer(config.image_dim, hidden_dim=128, dropout=config.dropout)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.aligner(pooled)

    def polarity(self, text_feats: torch.Tensor, feat_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, attention = self.mira(text_feats, feat_map, return_attention=True)
        return logits.softmax(dim=-1), attention

    def emotions(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.distribution(pooled)

    def score_regions(self, region_feats: torch.Tensor) -> torch.Tensor:
        return self.region_scorer(region_feats)


def fuse_polarity_sum(global_probs: torch.Tensor, region_dists: torch.Tensor, beta: float) -> torch.Tensor:
    """(1 - beta) global + beta * mean polarity of the regions; no regions -> global unchanged."""
    if region_dists.numel() == 0:
        return global_probs
    region_polarity = polarity_from_emotions(region_dists).mean(dim=0)
    return (1.0 - beta) * global_probs + beta * region_polarity


def calibrate_emotions(emotions: torch.Tensor, polarity: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rescale the positive / negative halves of an emotion distribution to the polarity mass."""
    mask = POSITIVE_MASK.to(emotions)
    pos_mass = (emotions * mask).sum(-1, keepdim=True).clamp_min(eps)
    neg_mass = (emotions * (1 - mask)).sum(-1, keepdim=True).clamp_min(eps)
    return emotions * mask * polarity[..., :1] / pos_mass + emotions * (1 - mask) * polarity[..., 1:2] / neg_mass
