"""Frozen-backbone feature cache for training and evaluation.

Training only fits small heads, so every image goes through the backbone and the region proposer
once; the cache (a build output under artifacts/) holds per image: the feature map, the pooled
vector (and of the mirrored image, for augmentation), the region candidates with their RoI
features, and the caption's text embedding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from models.encoders import ImageBackbone, TextEncoder
from pipelines.regions import RegionSettings, candidate_features, region_candidates

MAX_REGIONS = 50


class ImageItem(Protocol):
    """What the cache reads of a labelled image (Twitter1Item, MvsaPost, Emotion6Item)."""

    name: str
    path: Path

    @property
    def label(self) -> int: ...

    @property
    def caption(self) -> str: ...


@dataclass
class FeatureCache:
    names: list[str]
    labels: np.ndarray  # [N] 1 positive
    feat_maps: np.ndarray  # [N, C, h, w] float16
    pooled: np.ndarray  # [N, C] float32
    pooled_flip: np.ndarray  # [N, C] float32, mirrored image
    region_feats: np.ndarray  # [N, R, C] float16, zero padded
    region_objectness: np.ndarray  # [N, R] float32
    region_mask: np.ndarray  # [N, R] bool
    caption_emb: np.ndarray  # [N, D] float32 (zeros when no caption)

    def subset(self, idx: np.ndarray) -> FeatureCache:
        return FeatureCache(
            [self.names[i] for i in idx],
            *(
                getattr(self, f)[idx]
                for f in (
                    "labels",
                    "feat_maps",
                    "pooled",
                    "pooled_flip",
                    "region_feats",
                    "region_objectness",
                    "region_mask",
                    "caption_emb",
                )
            ),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, names=np.array(self.names), **{k: v for k, v in vars(self).items() if k != "names"})

    @classmethod
    def load(cls, path: Path) -> FeatureCache:
        with np.load(path) as z:
            return cls(names=[str(n) for n in z["names"]], **{k: z[k] for k in z.files if k != "names"})


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def cache_key(
    items: Sequence[ImageItem], backbone: ImageBackbone, text_encoder: TextEncoder, cfg: RegionSettings | None
) -> str:
    regions = f"{cfg}|{MAX_REGIONS}" if cfg is not None else "no-regions"
    digest = hashlib.sha256(f"{backbone.name}|{text_encoder.name}|{regions}".encode())
    for item in items:
        digest.update(item.name.encode())
    return digest.hexdigest()[:12]


def build_cache(
    items: Sequence[ImageItem],
    backbone: ImageBackbone,
    text_encoder: TextEncoder,
    cfg: RegionSettings = RegionSettings(),
    batch_size: int = 16,
    threads: int = 2,
    progress: bool = True,
    regions: bool = True,
) -> FeatureCache:
    n, channels = len(items), backbone.feature_dim
    h, w = backbone.spatial_size
    feat_maps = np.zeros((n, channels, h, w), np.float16)
    pooled = np.zeros((n, channels), np.float32)
    pooled_flip = np.zeros((n, channels), np.float32)
    slots = MAX_REGIONS if regions else 0
    region_feats = np.zeros((n, slots, channels), np.float16)
    region_obj = np.zeros((n, slots), np.float32)
    region_mask = np.zeros((n, slots), bool)
    bar = tqdm(total=n, desc="features", unit="img", disable=not progress)
    with ThreadPoolExecutor(threads) as pool, torch.inference_mode():
        for start in range(0, n, batch_size):
            batch = items[start : start + batch_size]
            images = list(pool.map(lambda it: load_rgb(it.path), batch))
            candidates = list(pool.map(lambda img: region_candidates(img, cfg), images)) if regions else []
            fmap, pool_vec = backbone(backbone.preprocess(images))
            _, pool_flip = backbone(backbone.preprocess([np.ascontiguousarray(img[:, ::-1]) for img in images]))
            for j, img in enumerate(images):
                i = start + j
                feat_maps[i], pooled[i], pooled_flip[i] = fmap[j].numpy(), pool_vec[j].numpy(), pool_flip[j].numpy()
                if not regions:
                    continue
                cand = candidates[j]
                r = min(len(cand.boxes), MAX_REGIONS)
                if r:
                    feats = candidate_features(backbone, fmap[j : j + 1], cand, img.shape[1], img.shape[0])
                    region_feats[i, :r] = feats[:r].numpy()
                    region_obj[i, :r] = cand.objectness[:r]
                    region_mask[i, :r] = True
            bar.update(len(batch))
    bar.close()
    captions = [it.caption for it in items]
    caption_emb = np.zeros((n, text_encoder.dim), np.float32)
    has = [i for i, c in enumerate(captions) if c]
    if has:
        caption_emb[has] = text_encoder.encode([captions[i] for i in has], batch_size=32)
    return FeatureCache(
        names=[it.name for it in items],
        labels=np.array([it.label for it in items]),
        feat_maps=feat_maps,
        pooled=pooled,
        pooled_flip=pooled_flip,
        region_feats=region_feats,
        region_objectness=region_obj,
        region_mask=region_mask,
        caption_emb=caption_emb,
    )


def cached_features(
    items: Sequence[ImageItem],
    backbone: ImageBackbone,
    text_encoder: TextEncoder,
    cache_dir: Path,
    cfg: RegionSettings = RegionSettings(),
    progress: bool = True,
    regions: bool = True,
    prefix: str = "twitter1",
) -> FeatureCache:
    """Load or build the cache; `regions=False` skips the (slow) proposals, leaving no region candidates."""
    path = Path(cache_dir) / f"{prefix}-{cache_key(items, backbone, text_encoder, cfg if regions else None)}.npz"
    if path.is_file():
        return FeatureCache.load(path)
    cache = build_cache(items, backbone, text_encoder, cfg, progress=progress, regions=regions)
    cache.save(path)
    return cache
