"""Evaluation inputs for both proposal kinds: the feature cache with learned region candidates.

``moodwatch eval twitter1 --proposals learned`` swaps the selective-search candidates of the feature
cache for the learned proposer's (computed from the cached feature maps, so no image is decoded twice),
and every AR row is then measured on them. ``seed_eval_cache`` writes the selective-search feature
cache from the teacher cache, so the expensive search runs once for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.encoders import ImageBackbone, TextEncoder
from models.proposals import LearnedProposer, batched_roi_features
from pipelines.features import MAX_REGIONS, FeatureCache, cache_key
from pipelines.proposal_teacher import TeacherCache
from pipelines.regions import RegionSettings


def image_sizes(paths: Sequence[Path]) -> np.ndarray:
    """[N, 2] (width, height) of each image after EXIF rotation, read from the headers only."""
    sizes = []
    for path in paths:
        with Image.open(path) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        sizes.append((h, w) if rotated else (w, h))
    return np.asarray(sizes, dtype=np.int64)


def learned_region_cache(
    cache: FeatureCache, proposer: LearnedProposer, sizes: np.ndarray, batch_size: int = 64
) -> FeatureCache:
    """The cache with its region candidates replaced by the learned proposer's (top ``MAX_REGIONS``)."""
    n = len(cache.names)
    feats = np.zeros((n, MAX_REGIONS, cache.feat_maps.shape[1]), np.float16)
    objectness = np.zeros((n, MAX_REGIONS), np.float32)
    mask = np.zeros((n, MAX_REGIONS), bool)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            sel = slice(start, start + batch_size)
            fmap = torch.as_tensor(cache.feat_maps[sel]).float()
            boxes, obj, keep = proposer(fmap, torch.as_tensor(sizes[sel]))
            r = min(boxes.shape[1], MAX_REGIONS)
            feats[sel, :r] = batched_roi_features(fmap, boxes[:, :r]).numpy()
            objectness[sel, :r], mask[sel, :r] = obj[:, :r].numpy(), keep[:, :r].numpy()
    feats[~mask] = 0
    return replace(cache, region_feats=feats, region_objectness=objectness, region_mask=mask)


def seed_eval_cache(
    teacher: TeacherCache, items: Sequence[Any], backbone: ImageBackbone, text_encoder: TextEncoder, cache_dir: Path
) -> Path:
    """Write the selective-search feature cache that ``moodwatch eval twitter1`` reads, from the teacher cache."""
    index = {name: i for i, name in enumerate(teacher.names)}
    idx = np.array([index[item.name] for item in items])
    t = teacher.subset(idx)
    captions = [item.caption for item in items]
    caption_emb = np.zeros((len(items), text_encoder.dim), np.float32)
    has = [i for i, c in enumerate(captions) if c]
    if has:
        caption_emb[has] = text_encoder.encode([captions[i] for i in has], batch_size=32)
    cache = FeatureCache(
        names=[item.name for item in items],
        labels=np.array([item.label for item in items]),
        feat_maps=t.feat_maps,
        pooled=t.pooled,
        pooled_flip=t.pooled_flip,
        region_feats=t.candidate_feats,
        region_objectness=t.candidate_objectness,
        region_mask=t.candidate_mask,
        caption_emb=caption_emb,
    )
    path = Path(cache_dir) / f"twitter1-{cache_key(items, backbone, text_encoder, RegionSettings())}.npz"
    cache.save(path)
    return path


if __name__ == "__main__":
    import argparse

    from models.encoders import load_image_backbone, load_text_encoder
    from pipelines.datasets import load_twitter1

    parser = argparse.ArgumentParser(description="write the selective-search eval cache from the teacher cache")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--teacher", type=Path, default=Path("artifacts/proposals/teacher-twitter1.npz"))
    parser.add_argument("--cache-dir", type=Path, default=Path("artifacts/cache"))
    args = parser.parse_args()
    backbone, text_encoder = load_image_backbone("efficientnet-lite0", "cpu"), load_text_encoder("all-MiniLM-L6-v2")
    teacher = TeacherCache.load(args.teacher)
    written = seed_eval_cache(teacher, load_twitter1("three", args.data), backbone, text_encoder, args.cache_dir)
    print(f"wrote {written}")
