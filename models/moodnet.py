"""MoodHeads: every trainable head of moodwatch in one module, composed the way inference uses them.

Given the backbone's feature map X [B, C, h, w] (pooled x [B, C]) and the text-encoder features T
[B, k, D] of the k sentences retrieved for each image:

    polarity   = softmax(MiraHead(T, X, post text P))               MIRA, 3 classes: positive, neutral, negative
    emotions   = DistributionHead(x)                                EW-MTCNN over the 8 Mikels emotions, prior inside
    emotion6   = mean of 5 DistributionHead_7(x)                    Emotion6's 7 labels, trained on human distributions
    region y_r = RegionScorer(RoIAlign(X, box_r))                   8-emotion distribution per region
    fused      = regions move the polar mass only:                  AR "sum" fusion over the top-K regions
                 pos' = (1 - beta) pos + beta (pos + neg) mean_r(pos(y_r)), neg' likewise, neutral unchanged

P is the post's own text feature (``post_mask`` False: no usable text, the image-only case). The Mikels
distribution is finally made consistent with the fused polarity by rescaling its positive and negative
halves to the fused positive : negative ratio (``calibrate_emotions``), so a post never reads
"negative" with "awe" as its dominant Mikels emotion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.distribution import DistributionEnsemble, DistributionHead
from models.emotion6 import NUM_EMOTION6
from models.emotions import POSITIVE_MASK
from models.encoders import AlignedImageEncoder
from models.fusion import MiraHead
from models.regions import RegionScorer
from schemas.emotions import POLARITY3

POLARITY_CLASSES = ("positive", "negative")  # two-way heads (checkpoints before schema v2)
POLARITY3_CLASSES = POLARITY3  # positive, neutral, negative: index order of three-way polarity tensors
POSITIVE, NEUTRAL, NEGATIVE = range(3)


@dataclass(frozen=True)
class HeadsConfig:
    image_dim: int = 1280
    text_dim: int = 384
    hidden_dim: int = 128
    mira_mode: str = "full"
    mira_pooling: str = "slots"  # models.fusion: "mean" over the queries (MIRA) or per-slot (sentences | post | image)
    retrieval_k: int = 3
    region_beta: float = 0.3
    region_alpha: float = 0.6
    region_fusion: str = "sum"
    dropout: float = 0.2
    post_text: bool = True  # the MIRA head reads the post's own text as one more query
    num_polarities: int = 3  # 3: positive, neutral, negative; 2: positive, negative (checkpoints before v2)
    emotion6: bool = True  # the head over Emotion6's labels
    emotion6_members: int = 5
    emotion6_hidden: int = 256
    emotion6_dropout: float = 0.5

    #: what a checkpoint written before these fields existed was trained with
    LEGACY = {"post_text": False, "num_polarities": 2, "emotion6": False, "mira_pooling": "mean"}

    @classmethod
    def from_dict(cls, values: dict) -> HeadsConfig:
        """A checkpoint's config; keys it predates take their legacy values (LEGACY), not today's defaults."""
        return cls(**{**cls.LEGACY, **values})

    def to_dict(self) -> dict:
        return asdict(self)


class MoodHeads(nn.Module):
    def __init__(self, config: HeadsConfig = HeadsConfig()) -> None:
        super().__init__()
        self.config = config
        self.aligner = AlignedImageEncoder(in_dim=config.image_dim, out_dim=config.text_dim, hidden_dim=512)
        self.mira = MiraHead(
            text_dim=config.text_dim,
            image_dim=config.image_dim,
            hidden_dim=config.hidden_dim,
            num_classes=config.num_polarities,
            dropout=config.dropout,
            mode=config.mira_mode,
            post_text=config.post_text,  # type: ignore[arg-type]
            pooling=config.mira_pooling,  # type: ignore[arg-type]
        )
        self.distribution = DistributionHead(in_dim=config.image_dim, dropout=config.dropout)
        self.emotion6 = (
            DistributionEnsemble(
                config.emotion6_members,
                in_dim=config.image_dim,
                hidden_dim=config.emotion6_hidden,
                dropout=config.emotion6_dropout,
                num_labels=NUM_EMOTION6,
                use_prior=False,
            )
            if config.emotion6
            else None
        )
        self.region_scorer = RegionScorer(config.image_dim, hidden_dim=128, dropout=config.dropout)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.aligner(pooled)

    def polarity(
        self,
        text_feats: torch.Tensor,
        feat_map: torch.Tensor,
        post_text: torch.Tensor | None = None,
        post_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Three-way probabilities [B, 3] and the attention; no ``post_text`` = every post image-only."""
        if post_text is not None and post_mask is None:
            raise ValueError("post_text needs post_mask (which posts have usable text)")
        logits, attention = self.mira(
            text_feats, feat_map, return_attention=True, post_text=post_text, post_mask=post_mask
        )
        return logits.softmax(dim=-1), attention

    def emotions(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.distribution(pooled)

    def emotions6(self, pooled: torch.Tensor) -> torch.Tensor:
        """Distribution over Emotion6's labels (anger, disgust, fear, joy, sadness, surprise, neutral)."""
        if self.emotion6 is None:
            raise RuntimeError("these heads have no Emotion6 head (a checkpoint from before schema v2); retrain")
        return self.emotion6(pooled)

    def score_regions(self, region_feats: torch.Tensor) -> torch.Tensor:
        return self.region_scorer(region_feats)


def polar_share(polarity: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Three-way [..., 3] -> positive vs negative [..., 2], renormalised (neutral dropped)."""
    polar = torch.stack([polarity[..., POSITIVE], polarity[..., NEGATIVE]], dim=-1)
    return polar / polar.sum(-1, keepdim=True).clamp_min(eps)


def fuse_regions_sum(global_probs: torch.Tensor, region_polarity: torch.Tensor, beta: float) -> torch.Tensor:
    """AR sum fusion on three-way probabilities [3]: the regions' mean positive : negative split [K, 2]
    moves the polar mass (1 - beta) global + beta regions; neutral is untouched. No regions: unchanged.

    Regions say which way an image leans (their 8-emotion distributions have no neutral), not whether
    the post takes a side, so they redistribute only the mass the global head gave to a side."""
    if region_polarity.shape[0] == 0:
        return global_probs
    polar_mass = global_probs[POSITIVE] + global_probs[NEGATIVE]
    region_pos = region_polarity[:, 0].mean()
    pos = (1.0 - beta) * global_probs[POSITIVE] + beta * polar_mass * region_pos
    neg = (1.0 - beta) * global_probs[NEGATIVE] + beta * polar_mass * (1.0 - region_pos)
    return torch.stack([pos, global_probs[NEUTRAL], neg])


def calibrate_emotions(emotions: torch.Tensor, polarity: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rescale the positive / negative halves of a Mikels distribution to the polarity's positive : negative
    split (``polarity`` three-way [..., 3] or positive, negative [..., 2])."""
    split = polar_share(polarity, eps) if polarity.shape[-1] == 3 else polarity
    mask = POSITIVE_MASK.to(emotions)
    pos_mass = (emotions * mask).sum(-1, keepdim=True).clamp_min(eps)
    neg_mass = (emotions * (1 - mask)).sum(-1, keepdim=True).clamp_min(eps)
    return emotions * mask * split[..., :1] / pos_mass + emotions * (1 - mask) * split[..., 1:2] / neg_mass
