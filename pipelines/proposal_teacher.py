"""Teacher boxes for the learned proposals: selective search + today's AR pipeline, cached once.

Per image the cache holds the backbone feature map (float16), the selective-search representatives
(one per spectral cluster, up to 50) and the AR top-8 of the shipped heads, boxes normalised to [0, 1]
by the image size. It is a build output (artifacts/proposals/), made by
``python -m pipelines.proposal_teacher --data ../shared/data``.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.encoders import ImageBackbone
from models.moodnet import MoodHeads
from pipelines.analyze import AnalyzerOptions, region_distributions, select_regions
from pipelines.features import MAX_REGIONS as MAX_CANDIDATES
from pipelines.features import load_rgb
from pipelines.regions import RegionCandidates, RegionSettings, candidate_features, region_candidates

TOP_K = 8


@dataclass
class TeacherCache:
    names: list[str]
    sizes: np.ndarray  # [N, 2] width, height
    feat_maps: np.ndarray  # [N, C, h, w] float16
    top_boxes: np.ndarray  # [N, 8, 4] normalised x0, y0, x1, y1
    top_mask: np.ndarray  # [N, 8] bool
    candidate_boxes: np.ndarray  # [N, 50, 4] normalised
    candidate_mask: np.ndarray  # [N, 50] bool
    candidate_objectness: np.ndarray  # [N, 50] float32
    candidate_feats: np.ndarray  # [N, 50, C] float16, RoI features (as in the feature cache)
    pooled: np.ndarray  # [N, C] float32
    pooled_flip: np.ndarray  # [N, C] float32, mirrored image

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, names=np.array(self.names), **{k: v for k, v in vars(self).items() if k != "names"})

    @classmethod
    def load(cls, path: Path) -> TeacherCache:
        with np.load(path) as z:
            return cls(names=[str(n) for n in z["names"]], **{k: z[k] for k in z.files if k != "names"})

    def subset(self, idx: np.ndarray) -> TeacherCache:
        fields = (
            "sizes",
            "feat_maps",
            "top_boxes",
            "top_mask",
            "candidate_boxes",
            "candidate_mask",
            "candidate_objectness",
            "candidate_feats",
            "pooled",
            "pooled_flip",
        )
        return TeacherCache([self.names[i] for i in idx], *(getattr(self, f)[idx] for f in fields))


def selective_search_top(
    heads: MoodHeads,
    backbone: ImageBackbone,
    feat_map: torch.Tensor,
    image: np.ndarray,
    candidates: RegionCandidates,
    options: AnalyzerOptions,
    top_k: int = TOP_K,
) -> tuple[np.ndarray, np.ndarray]:
    """The AR top-K of one image's selective-search candidates: boxes [K, 4] normalised to the image, mask [K]."""
    height, width = image.shape[:2]
    dists = region_distributions(heads, backbone, feat_map, candidates, width, height)
    regions, _ = select_regions(dists, candidates, width, height, options)
    boxes, mask = np.zeros((top_k, 4), np.float32), np.zeros(top_k, bool)
    for k, reg in enumerate(regions[:top_k]):
        boxes[k] = np.array([reg.x0 / width, reg.y0 / height, reg.x1 / width, reg.y1 / height], np.float32)
        mask[k] = True
    return boxes, mask


def build_teacher(
    paths: list[Path], backbone: ImageBackbone, heads: MoodHeads, batch_size: int = 16, threads: int = 2
) -> TeacherCache:
    options = AnalyzerOptions(region=RegionSettings())
    n, (h, w) = len(paths), backbone.spatial_size
    out = TeacherCache(
        [p.name for p in paths],
        np.zeros((n, 2), np.int32),
        np.zeros((n, backbone.feature_dim, h, w), np.float16),
        np.zeros((n, TOP_K, 4), np.float32),
        np.zeros((n, TOP_K), bool),
        np.zeros((n, MAX_CANDIDATES, 4), np.float32),
        np.zeros((n, MAX_CANDIDATES), bool),
        np.zeros((n, MAX_CANDIDATES), np.float32),
        np.zeros((n, MAX_CANDIDATES, backbone.feature_dim), np.float16),
        np.zeros((n, backbone.feature_dim), np.float32),
        np.zeros((n, backbone.feature_dim), np.float32),
    )
    with ThreadPoolExecutor(threads) as pool, torch.inference_mode(), tqdm(total=n, desc="teacher", unit="img") as bar:
        for start in range(0, n, batch_size):
            images = list(pool.map(load_rgb, paths[start : start + batch_size]))
            candidates = list(pool.map(lambda img: region_candidates(img, options.region), images))
            fmap, pooled = backbone(backbone.preprocess(images))
            _, pooled_flip = backbone(backbone.preprocess([np.ascontiguousarray(img[:, ::-1]) for img in images]))
            for j, (img, cand) in enumerate(zip(images, candidates)):
                i, (height, width) = start + j, img.shape[:2]
                scale = np.array([width, height, width, height], np.float32)
                out.sizes[i], out.feat_maps[i] = (width, height), fmap[j].numpy()
                out.pooled[i], out.pooled_flip[i] = pooled[j].numpy(), pooled_flip[j].numpy()
                r = min(len(cand.boxes), MAX_CANDIDATES)
                out.candidate_boxes[i, :r], out.candidate_mask[i, :r] = cand.boxes[:r] / scale, True
                out.candidate_objectness[i, :r] = cand.objectness[:r]
                if r:
                    feats = candidate_features(backbone, fmap[j : j + 1], cand, width, height)
                    out.candidate_feats[i, :r] = feats[:r].numpy()
                out.top_boxes[i], out.top_mask[i] = selective_search_top(
                    heads, backbone, fmap[j : j + 1], img, cand, options
                )
            bar.update(len(images))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--heads", type=Path, default=Path(__file__).resolve().parents[1] / "models/weights/heads.pt")
    parser.add_argument("--out", type=Path, default=Path("artifacts/proposals/teacher-twitter1.npz"))
    args = parser.parse_args()
    from models.encoders import load_image_backbone
    from pipelines.checkpoints import load_heads
    from pipelines.datasets import load_twitter1

    items = load_twitter1("three", args.data)
    teacher = build_teacher(
        [it.path for it in items], load_image_backbone("efficientnet-lite0", "cpu"), load_heads(args.heads)[0]
    )
    teacher.save(args.out)
    print(f"wrote {args.out}: {len(items)} images")
