"""Three-way polarity (positive / neutral / negative) of the MIRA head: its training data and training.

Two kinds of labels train the same head:
- MVSA-Single posts: image + the post's text, three classes, cross-entropy over the three;
- Twitter I photos: image only, positive vs negative, which says nothing about neutral: cross-entropy
  over the positive and negative logits only (``binary``), so these photos neither teach nor punish
  the neutral class. Twitter I is scored the same way: p(positive) / (p(positive) + p(negative)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from models.moodnet import NEGATIVE, POSITIVE, MoodHeads
from pipelines.features import FeatureCache
from pipelines.fitting import _batches, _flip_mask, _tensor, retrieve
from pipelines.retrieval import SentenceDatabase


@dataclass
class PolarityData:
    feat_maps: np.ndarray  # [N, C, h, w]
    pooled: np.ndarray  # [N, C]
    post_text: np.ndarray  # [N, D] text-encoder feature of the post's text (zeros: none)
    post_mask: np.ndarray  # [N] bool, the post has usable text
    labels: np.ndarray  # [N] index in POLARITY3 (positive, neutral, negative)
    binary: np.ndarray  # [N] bool, the label only says positive vs negative

    @classmethod
    def from_twitter1(cls, cache: FeatureCache, text_dim: int) -> PolarityData:
        """Twitter I (label 1 = positive): photos without post text; the generated captions are not posts."""
        n = len(cache.labels)
        return cls(
            cache.feat_maps,
            cache.pooled,
            np.zeros((n, text_dim), np.float32),
            np.zeros(n, bool),
            np.where(cache.labels == 1, POSITIVE, NEGATIVE),
            np.ones(n, bool),
        )

    @classmethod
    def from_posts(cls, cache: FeatureCache, use_text: bool = True) -> PolarityData:
        """MVSA-Single: the cache's caption embedding is the post's cleaned text (labels index POLARITY3)."""
        text = cache.caption_emb.astype(np.float32)
        mask = (np.abs(text).sum(1) > 0) & use_text
        return cls(
            cache.feat_maps,
            cache.pooled,
            text * mask[:, None],
            mask,
            cache.labels.astype(int),
            np.zeros(len(text), bool),
        )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> PolarityData:
        return PolarityData(*(getattr(self, f.name)[idx] for f in fields(self)))

    def without_text(self) -> PolarityData:
        return PolarityData(
            self.feat_maps,
            self.pooled,
            np.zeros_like(self.post_text),
            np.zeros_like(self.post_mask),
            self.labels,
            self.binary,
        )

    @staticmethod
    def concat(parts: list[PolarityData]) -> PolarityData:
        return PolarityData(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(PolarityData)))


def retrieved_features(heads: MoodHeads, db: SentenceDatabase, pooled: np.ndarray) -> torch.Tensor:
    """[N, k, D] text features of the k sentences retrieved for each image ([N, 0, D] when k = 0 or the
    head reads no retrieved sentences)."""
    k = heads.config.retrieval_k
    if k == 0 or heads.mira.mode in ("image_only", "text_only"):
        return torch.zeros(len(pooled), 0, heads.config.text_dim)
    return _tensor(retrieve(heads, db, pooled, k).features)


def polarity_loss(
    logits: torch.Tensor, labels: torch.Tensor, binary: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """Mean over the batch of three-way CE (``binary`` False) or CE over positive vs negative (True)."""
    total = logits.new_zeros(())
    three_way = ~binary
    if three_way.any():
        if logits.shape[1] != 3:
            raise ValueError("three-way labels need a three-way head")
        total = total + nn.functional.cross_entropy(
            logits[three_way], labels[three_way], label_smoothing=smoothing, reduction="sum"
        )
    if binary.any():
        two = logits[binary][:, [POSITIVE, logits.shape[1] - 1]]  # a two-way head's negative is its column 1
        target = (labels[binary] == NEGATIVE).long()
        total = total + nn.functional.cross_entropy(two, target, label_smoothing=smoothing, reduction="sum")
    return total / len(labels)


def train_polarity(
    heads: MoodHeads,
    db: SentenceDatabase,
    data: PolarityData,
    cfg: Any,
    rng: np.random.Generator,
    epochs: int | None = None,
) -> list[float]:
    """Fit ``heads.mira`` on ``data`` (AdamW with a cosine decay to 0, mirrored feature maps as augmentation).

    Few epochs on purpose: on MVSA-Single the head fits the 3,611 training posts within 2-3 epochs and dev
    accuracy falls after that (a per-epoch curve is in the README). Returns the losses.

    ``cfg``: a pipelines.train.TrainConfig (seed, epochs, batch_size, lr, weight_decay)."""
    text = retrieved_features(heads, db, data.pooled)
    fmaps, post, mask = _tensor(data.feat_maps), _tensor(data.post_text), torch.as_tensor(data.post_mask)
    labels, binary = torch.as_tensor(data.labels, dtype=torch.long), torch.as_tensor(data.binary)
    module = heads.mira
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs = epochs or cfg.epochs
    steps = epochs * -(-len(data) // cfg.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1))))
    losses = []
    for _ in range(epochs):
        for idx in _batches(len(data), cfg.batch_size, rng):
            fm = fmaps[idx]
            fm = torch.where(_flip_mask(rng, len(idx), 1, 1, 1), fm.flip(-1), fm)
            logits = module(text[idx], fm, post_text=post[idx], post_mask=mask[idx])
            loss = polarity_loss(logits, labels[idx], binary[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            losses.append(loss.item())
    module.eval()
    return losses


def positive_share(probs: torch.Tensor) -> torch.Tensor:
    """p(positive) / (p(positive) + p(negative)) of [N, 3] (or two-way [N, 2]) probabilities: the binary score."""
    return probs[:, POSITIVE] / (probs[:, POSITIVE] + probs[:, -1]).clamp_min(1e-12)


def polarity_probs(heads: MoodHeads, db: SentenceDatabase, data: PolarityData, batch_size: int = 256) -> torch.Tensor:
    """Three-way probabilities [N, 3] of the MIRA head (before region fusion)."""
    text = retrieved_features(heads, db, data.pooled)
    out = []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            probs, _ = heads.polarity(
                text[sl], _tensor(data.feat_maps[sl]), _tensor(data.post_text[sl]), torch.as_tensor(data.post_mask[sl])
            )
            out.append(probs)
    return torch.cat(out) if out else torch.zeros(0, heads.config.num_polarities)
