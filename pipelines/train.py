"""Training of every head on cached frozen-backbone features.

What supervises what (no data set here labels emotions of Twitter or MVSA images):
- aligned image encoder: contrastive (InfoNCE) against the MiniLM embedding of each training
  image's generated caption (captions.csv) -- no sentiment label is used;
- MIRA polarity head (three-way): Twitter I labels, positive vs negative, cross-entropy over those two
  logits only (image only, no post text), together with MVSA-Single posts' three-way labels (image +
  the post's text), cross-entropy over all three (pipelines.polarity);
- distribution head (EW-MTCNN, Mikels): soft 8-emotion targets built from the emotion labels of the
  sentences retrieved for the image (top `target_k`, similarity-weighted), restricted to the emotions
  of the image's labelled polarity (uniform over that half when none was retrieved); loss
  (1 - lambda) CE + lambda KL, lambda = 0.7;
- Emotion6 head: Emotion6's human emotion distributions, five heads averaged (pipelines.emotion6);
- region scorer: the same image-level soft target for every region of the image (multiple-instance
  style: the paper's region sentiment labels do not exist for this data);
- concatenation fusion (evaluation variant): polarity labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from models.emotions import POSITIVE_MASK, multitask_loss, polarity_from_emotions
from models.moodnet import HeadsConfig, MoodHeads
from models.regions import ConcatFusion, ar_score, senti_score
from pipelines.features import FeatureCache
from pipelines.fitting import _batches, _flip_mask, _tensor, retrieve
from pipelines.polarity import PolarityData, polarity_probs, train_polarity
from pipelines.retrieval import SentenceDatabase


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 8
    align_epochs: int = 40
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    lam: float = 0.7
    target_k: int = 10
    target_temperature: float = 0.05
    heads: HeadsConfig = HeadsConfig()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["heads"] = self.heads.to_dict()
        return d


def _fit(
    module: nn.Module,
    n: int,
    epochs: int,
    batch_size: int,
    cfg: TrainConfig,
    rng: np.random.Generator,
    loss_of: Callable[[np.ndarray], torch.Tensor | None],
) -> list[float]:
    """AdamW over shuffled mini-batches of n samples; `loss_of(idx)` may return None to skip a batch."""
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for _ in range(epochs):
        for idx in _batches(n, batch_size, rng):
            loss = loss_of(idx)
            if loss is None:
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    module.eval()
    return losses


def train_aligner(heads: MoodHeads, cache: FeatureCache, cfg: TrainConfig, rng: np.random.Generator) -> list[float]:
    has_caption = np.abs(cache.caption_emb).sum(1) > 0
    if has_caption.sum() < 2:
        return []
    pooled, flipped = _tensor(cache.pooled[has_caption]), _tensor(cache.pooled_flip[has_caption])
    text = _tensor(cache.caption_emb[has_caption])

    def loss_of(idx):
        if len(idx) < 2:  # InfoNCE needs negatives
            return None
        x = torch.where(_flip_mask(rng, len(idx), 1), flipped[idx], pooled[idx])
        return heads.aligner.loss(x, text[idx])

    return _fit(heads.aligner, len(pooled), cfg.align_epochs, 128, cfg, rng, loss_of)


def emotion_targets(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache, cfg: TrainConfig) -> np.ndarray:
    """Soft 8-emotion targets from retrieved sentence labels, kept on the labelled polarity's half."""
    r = retrieve(heads, db, cache.pooled, cfg.target_k)
    weights = np.exp((r.scores - r.scores.max(1, keepdims=True)) / cfg.target_temperature)
    target = np.zeros((len(cache.labels), 8), np.float32)
    np.add.at(target, (np.arange(len(target))[:, None].repeat(r.ids.shape[1], 1), r.emotion_ids), weights)
    half = np.where(cache.labels[:, None] == 1, POSITIVE_MASK.numpy()[None], 1 - POSITIVE_MASK.numpy()[None])
    target *= half
    empty = target.sum(1) <= 0
    target[empty] = half[empty]
    return target / target.sum(1, keepdims=True)


def polarity_targets(labels: np.ndarray) -> torch.Tensor:
    """Twitter I label 1 = positive -> class 0 (index order of POLARITY_CLASSES)."""
    return torch.as_tensor(1 - np.asarray(labels), dtype=torch.long)


def train_mira(
    heads: MoodHeads,
    db: SentenceDatabase,
    cache: FeatureCache,
    cfg: TrainConfig,
    rng,
    extra: PolarityData | None = None,
) -> list[float]:
    """The MIRA head on Twitter I (binary, image only) plus ``extra`` labelled posts (e.g. MVSA-Single)."""
    data = PolarityData.from_twitter1(cache, heads.config.text_dim)
    if extra is not None:
        data = PolarityData.concat([data, extra])
    return train_polarity(heads, db, data, cfg, rng)


def train_distribution(
    heads: MoodHeads, cache: FeatureCache, targets: np.ndarray, cfg: TrainConfig, rng
) -> list[float]:
    pooled, flipped, t = _tensor(cache.pooled), _tensor(cache.pooled_flip), _tensor(targets)

    def loss_of(idx):
        p = heads.distribution(torch.where(_flip_mask(rng, len(idx), 1), flipped[idx], pooled[idx]))
        return multitask_loss(p, t[idx], lam=cfg.lam)

    return _fit(heads.distribution, len(t), cfg.epochs, cfg.batch_size, cfg, rng, loss_of)


def train_region_scorer(
    heads: MoodHeads, cache: FeatureCache, targets: np.ndarray, cfg: TrainConfig, rng
) -> list[float]:
    img, reg = np.nonzero(cache.region_mask)
    if len(img) == 0:
        return []
    feats, t = _tensor(cache.region_feats[img, reg]), _tensor(targets[img])
    return _fit(
        heads.region_scorer,
        len(t),
        max(1, cfg.epochs // 4),
        256,
        cfg,
        rng,
        lambda idx: multitask_loss(heads.region_scorer(feats[idx]), t[idx], lam=cfg.lam),
    )


def top_regions(
    heads: MoodHeads, cache: FeatureCache, k: int, alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the top-k regions by AR score -> (emotion dists [N,k,8], feats [N,k,C], mask [N,k])."""
    with torch.inference_mode():
        feats = _tensor(cache.region_feats)
        n, r, c = feats.shape
        dists = heads.score_regions(feats.view(n * r, c)).view(n, r, 8)
        ar = ar_score(_tensor(cache.region_objectness), senti_score(dists), alpha=alpha)
        ar = torch.where(torch.as_tensor(cache.region_mask), ar, torch.full_like(ar, -1.0))
        order = ar.argsort(dim=1, descending=True)[:, :k]
        mask = torch.gather(torch.as_tensor(cache.region_mask), 1, order)
        top_d = torch.gather(dists, 1, order.unsqueeze(-1).expand(-1, -1, 8))
        top_f = torch.gather(feats, 1, order.unsqueeze(-1).expand(-1, -1, c))
    return top_d, top_f, mask


def train_concat_fusion(
    heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache, cfg: TrainConfig, rng, top_k: int = 8
) -> ConcatFusion:
    glob = mira_features(heads, db, cache)
    _, feats, mask = top_regions(heads, cache, top_k, heads.config.region_alpha)
    fusion = ConcatFusion(glob.shape[1], feats.shape[2])
    y = polarity_targets(cache.labels)
    _fit(
        fusion,
        len(y),
        cfg.epochs,
        cfg.batch_size,
        cfg,
        rng,
        lambda idx: nn.functional.cross_entropy(fusion(glob[idx], feats[idx], mask[idx]), y[idx], label_smoothing=0.1),
    )
    return fusion


def mira_features(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache) -> torch.Tensor:
    with torch.inference_mode():
        text = _tensor(retrieve(heads, db, cache.pooled, heads.config.retrieval_k).features)
        pooled, _ = heads.mira.features(text if heads.mira.mode != "image_only" else None, _tensor(cache.feat_maps))
    return pooled


def mira_probs(heads: MoodHeads, db: SentenceDatabase, cache: FeatureCache) -> torch.Tensor:
    """Polarity probabilities [N, num_polarities] of Twitter I images (no post text)."""
    return polarity_probs(heads, db, PolarityData.from_twitter1(cache, heads.config.text_dim))


def train_heads(
    cache: FeatureCache,
    db: SentenceDatabase,
    cfg: TrainConfig = TrainConfig(),
    base: MoodHeads | None = None,
    extra: PolarityData | None = None,
) -> tuple[MoodHeads, dict]:
    """Fit every head but the Emotion6 one (pipelines.emotion6); returns the heads and the loss history.

    With `base` (an ablation of an already trained model), the aligner, distribution head and
    region scorer are copied from it and only the MIRA head is trained. `extra`: more polarity data
    for the MIRA head (posts with text, three-way labels).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    heads = MoodHeads(cfg.heads)
    history: dict[str, list[float]] = {}
    if base is not None:
        for name in ("aligner", "distribution", "region_scorer"):
            getattr(heads, name).load_state_dict(getattr(base, name).state_dict())
        history["mira"] = train_mira(heads, db, cache, cfg, rng, extra)
        return heads.eval(), history
    history["aligner"] = train_aligner(heads, cache, cfg, rng)
    targets = emotion_targets(heads, db, cache, cfg)
    history["mira"] = train_mira(heads, db, cache, cfg, rng, extra)
    history["distribution"] = train_distribution(heads, cache, targets, cfg, rng)
    history["regions"] = train_region_scorer(heads, cache, targets, cfg, rng)
    return heads.eval(), history


def mvsa_config(seed: int = 0) -> TrainConfig:
    """Training of the posts' polarity head on MVSA-Single alone: it fits 3,611 posts within 2-3 epochs and dev
    accuracy falls after, so few epochs, a smaller step and more dropout (chosen on dev, README)."""
    return TrainConfig(seed=seed, epochs=3, lr=5e-4, heads=replace(HeadsConfig(), dropout=0.4))


def ship_config(seed: int = 0) -> TrainConfig:
    """The shipped heads: Twitter I photos and MVSA-Single posts train one polarity head together (4 epochs, 5e-4,
    dropout 0.4: on Twitter I 5-fold with MVSA train added, AR sum 0.894; README)."""
    return TrainConfig(seed=seed, epochs=4, lr=5e-4, heads=replace(HeadsConfig(), dropout=0.4))


def train_product(
    cache: FeatureCache,
    db: SentenceDatabase,
    cfg: TrainConfig,
    posts: PolarityData | None = None,
    emotion6: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    emotion6_cfg=None,
) -> tuple[MoodHeads, dict]:
    """Every head: train_heads on Twitter I (+ ``posts`` for the polarity head), then the Emotion6 head on
    ``emotion6`` = (pooled, pooled of the mirrored images, human distributions)."""
    from pipelines.emotion6 import Emotion6Config, train_emotion6

    heads, history = train_heads(cache, db, cfg, extra=posts)
    if emotion6 is not None and heads.emotion6 is not None:
        e6cfg = emotion6_cfg or Emotion6Config(seed=cfg.seed)
        history["emotion6"] = train_emotion6(heads.emotion6, *emotion6, e6cfg)
    return heads.eval(), history


def with_mode(cfg: TrainConfig, mode: str, k: int | None = None) -> TrainConfig:
    return replace(cfg, heads=replace(cfg.heads, mira_mode=mode, retrieval_k=k or cfg.heads.retrieval_k))


def region_polarity(heads: MoodHeads, cache: FeatureCache, k: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    dists, _, mask = top_regions(heads, cache, k, heads.config.region_alpha)
    return polarity_from_emotions(dists), mask
