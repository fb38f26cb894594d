"""Do the affective regions survive an imperceptible change? Both proposal methods, and the teacher recall's ceiling.

For each method, the share of an image's top-8 regions found again (IoU >= 0.5) among the top-8 of a perturbed
copy, its boxes mapped back to the original frame: re-saved as JPEG at quality 90, scaled to 90 %, mirrored. The
same images' learned top-8 against the selective-search top-8 (the teacher recall of pipelines.proposal_distill,
computed from the images) is printed beside them: the teacher's agreement with itself under a change no viewer
sees bounds what any other method can show against it. Images: the proposer's held-out twitter1 images.

    python -m pipelines.proposal_stability --data ../shared/data [--images 177]
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.encoders import ImageBackbone
from models.moodnet import MoodHeads
from models.proposals import LearnedProposer, box_recall
from pipelines.analyze import AnalyzerOptions
from pipelines.proposal_teacher import TOP_K, selective_search_top
from pipelines.regions import learned_top_regions, region_candidates

# images -> (boxes [B, K, 4] normalised to each image, mask [B, K])
RegionMethod = Callable[[list[np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Perturbation:
    name: str
    apply: Callable[[np.ndarray], np.ndarray]
    boxes_back: Callable[[np.ndarray], np.ndarray]  # normalised boxes of the perturbed image -> original frame


def _jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _scaled(image: np.ndarray, factor: float = 0.9) -> np.ndarray:
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def _mirror_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.stack([1.0 - boxes[..., 2], boxes[..., 1], 1.0 - boxes[..., 0], boxes[..., 3]], axis=-1)


PERTURBATIONS = (
    Perturbation("jpeg_q90", _jpeg, lambda b: b),
    Perturbation("scale_0.9", _scaled, lambda b: b),  # normalised boxes do not move with a uniform scale
    Perturbation("mirror", lambda img: np.ascontiguousarray(img[:, ::-1]), _mirror_boxes),
)


def stability(
    methods: dict[str, RegionMethod],
    images: Sequence[np.ndarray],
    perturbations: Sequence[Perturbation] = PERTURBATIONS,
    teacher: str | None = "selective_search",
    iou: float = 0.5,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Per method: recall of its own top-K under each perturbation, and of ``teacher``'s top-K on the originals."""
    counts = {m: {p.name: [0, 0] for p in perturbations} for m in methods}
    versus = {m: [0, 0] for m in methods if teacher in methods and m != teacher}
    with tqdm(total=len(images), desc="stability", unit="img") as bar:
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            originals = {m: _tensors(*method(batch)) for m, method in methods.items()}
            for m in versus:
                _add(versus[m], box_recall(*originals[teacher], *originals[m], iou))
            for p in perturbations:
                changed = [p.apply(img) for img in batch]
                for m, method in methods.items():
                    boxes, mask = method(changed)
                    _add(counts[m][p.name], box_recall(*originals[m], *_tensors(p.boxes_back(boxes), mask), iou))
            bar.update(len(batch))
    out = {m: {f"self_{name}": _ratio(c) for name, c in per.items()} for m, per in counts.items()}
    for m, c in versus.items():
        out[m][f"recall_of_{teacher}"] = _ratio(c)
    return out


def selective_search_method(backbone: ImageBackbone, heads: MoodHeads, options: AnalyzerOptions) -> RegionMethod:
    pool = ThreadPoolExecutor(options.proposal_threads, thread_name_prefix="proposals")

    def top(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        candidates = list(pool.map(lambda img: region_candidates(img, options.region), images))
        with torch.inference_mode():
            feat_map, _ = backbone(backbone.preprocess(images))
            picked = [
                selective_search_top(heads, backbone, feat_map[i : i + 1], img, cand, options, options.regions_top_k)
                for i, (img, cand) in enumerate(zip(images, candidates))
            ]
        return np.stack([b for b, _ in picked]), np.stack([m for _, m in picked])

    return top


def learned_method(
    backbone: ImageBackbone, heads: MoodHeads, proposer: LearnedProposer, options: AnalyzerOptions
) -> RegionMethod:
    def top(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        sizes = torch.tensor([(img.shape[1], img.shape[0]) for img in images])
        with torch.inference_mode():
            feat_map, _ = backbone(backbone.preprocess(images))
            boxes, objectness, mask = proposer(feat_map, sizes)
            picked = learned_top_regions(
                heads, feat_map, boxes, objectness, mask, options.regions_top_k, options.region_alpha
            )
        return picked.boxes.numpy(), picked.mask.numpy()

    return top


def _tensors(boxes: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(np.asarray(boxes, np.float32)), torch.as_tensor(np.asarray(mask, bool))


def _add(acc: list[int], counted: tuple[int, int]) -> None:
    acc[0] += counted[0]
    acc[1] += counted[1]


def _ratio(acc: list[int]) -> float:
    return round(acc[0] / acc[1], 3) if acc[1] else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder (../shared/data)")
    parser.add_argument("--heads", type=Path, default=Path(__file__).resolve().parents[1] / "models/weights/heads.pt")
    parser.add_argument("--proposer", type=Path, default=None, help="learned proposer (default: the shipped one)")
    parser.add_argument("--images", type=int, default=None, help="use only the first N held-out images")
    parser.add_argument("--seed", type=int, default=0, help="the held-out split's seed (as in proposal_distill)")
    args = parser.parse_args()
    from models.encoders import load_image_backbone
    from pipelines.checkpoints import load_heads
    from pipelines.datasets import load_twitter1
    from pipelines.features import load_rgb
    from pipelines.proposal_distill import held_out_split
    from pipelines.regions import load_proposer

    items = load_twitter1("three", args.data)
    _, held_out = held_out_split(len(items), args.seed)
    paths = [items[i].path for i in held_out[: args.images]]
    images = [load_rgb(p) for p in tqdm(paths, desc="decode", unit="img")]
    backbone, heads = load_image_backbone("efficientnet-lite0", "cpu"), load_heads(args.heads)[0]
    options = AnalyzerOptions(regions_top_k=TOP_K)
    methods = {
        "selective_search": selective_search_method(backbone, heads, options),
        "learned": learned_method(backbone, heads, load_proposer(args.proposer), options),
    }
    result = stability(methods, images)
    print(json.dumps({"images": len(images), "iou": 0.5, "top_k": TOP_K, **result}, indent=2))


if __name__ == "__main__":
    main()
