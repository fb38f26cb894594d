"""Affective-region candidates for one image: proposals -> filters -> spectral clusters -> RoI features.

One backbone pass per image serves every region: region features are RoI-aligned from the
image's feature map instead of re-running the CNN on each crop (the paper's way; measured in
`make bench` as the naive path).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.encoders import ImageBackbone
from models.moodnet import MoodHeads
from models.proposals import LearnedProposer, affective_top_k, batched_roi_features
from models.regions import filter_proposals, propose_boxes, representative_boxes, roi_features

ProposalMethod = Literal["learned", "selective_search"]
PROPOSAL_METHODS: tuple[str, ...] = ("learned", "selective_search")
DEFAULT_PROPOSER = Path(__file__).resolve().parents[1] / "models" / "weights" / "proposals.pt"


@dataclass(frozen=True)
class RegionSettings:
    proposal_max_side: int = 200  # 300 px costs ~2x (0.7 s vs 0.36 s per image on this machine, quiet)
    max_proposals: int = 300
    clusters: int = 50
    min_area: float = 800.0
    max_aspect: float = 6.0
    seed: int = 0


@dataclass
class RegionCandidates:
    boxes: np.ndarray  # [R, 4] float32, original pixels
    objectness: np.ndarray  # [R] float32 in [0, 1]


def region_candidates(rgb: np.ndarray, cfg: RegionSettings = RegionSettings()) -> RegionCandidates:
    boxes, objectness = propose_boxes(rgb, max_side=cfg.proposal_max_side, min_area=cfg.min_area)
    boxes, objectness = filter_proposals(boxes, objectness, min_area=cfg.min_area, max_aspect=cfg.max_aspect)
    if len(boxes) == 0:
        return RegionCandidates(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))
    keep = representative_boxes(boxes, objectness, m=cfg.clusters, max_proposals=cfg.max_proposals, seed=cfg.seed)
    return RegionCandidates(boxes[keep].astype(np.float32), objectness[keep].astype(np.float32))


def candidate_features(
    backbone: ImageBackbone, feat_map: torch.Tensor, candidates: RegionCandidates, width: int, height: int
) -> torch.Tensor:
    """[R, C] RoI-aligned features of the candidates from one image's feature map [1, C, h, w]."""
    if len(candidates.boxes) == 0:
        return feat_map.new_zeros((0, feat_map.shape[1]))
    boxes = backbone.to_feature_coords(candidates.boxes, width, height).to(feat_map)
    return roi_features(feat_map, [boxes], spatial_scale=1.0, output_size=(2, 2))


# -- learned proposals: the whole micro-batch at once ---------------------------------------------------


@dataclass
class TopRegions:
    """The AR top-K of every image of a batch, as tensors ([B, K, ...]); ``mask`` False = no region."""

    boxes: torch.Tensor  # [B, K, 4] normalised to the image size
    objectness: torch.Tensor  # [B, K]
    dists: torch.Tensor  # [B, K, 8]
    mask: torch.Tensor  # [B, K] bool


def learned_top_regions(
    heads: MoodHeads,
    feat_map: torch.Tensor,
    boxes: torch.Tensor,
    objectness: torch.Tensor,
    mask: torch.Tensor,
    top_k: int = 8,
    alpha: float = 0.6,
) -> TopRegions:
    """Batched RoI-align -> region distributions -> senti / AR -> top-K, for [B, R] candidates."""
    b, r = boxes.shape[:2]
    feats = batched_roi_features(feat_map, boxes.to(feat_map.dtype))  # [B, R, C]
    dists = heads.score_regions(feats.reshape(b * r, -1)).reshape(b, r, -1).float()
    idx, _, _, top_mask = affective_top_k(dists, objectness.float(), mask, top_k, alpha)
    pick = lambda t: t.gather(1, idx.reshape(b, -1, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))  # noqa: E731
    return TopRegions(pick(boxes.float()), pick(objectness.float()), pick(dists), top_mask)


def pad_top_regions(top: TopRegions, top_k: int) -> TopRegions:
    """``top`` with masked (zero, False) slots appended up to ``top_k`` (the proposer kept fewer candidates)."""
    slots = top_k - top.mask.shape[1]
    if slots <= 0:
        return top

    def pad(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t.new_zeros((t.shape[0], slots, *t.shape[2:]))], dim=1)

    return TopRegions(pad(top.boxes), pad(top.objectness), pad(top.dists), pad(top.mask))


def load_proposer(path: Path | None = None, device: str | torch.device = "cpu") -> LearnedProposer:
    blob = torch.load(path or DEFAULT_PROPOSER, map_location="cpu", weights_only=False)
    cfg = dict(blob["config"])
    cfg["shapes"] = tuple(tuple(s) for s in cfg["shapes"])
    cfg["feature_size"] = tuple(cfg["feature_size"])
    proposer = LearnedProposer(**cfg)
    proposer.head.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return proposer.eval().to(device)


def proposer_mismatch(proposer: LearnedProposer, backbone: ImageBackbone) -> str | None:
    """Why the proposer cannot read this backbone's feature map (channels and grid), or None when it can."""
    cfg = proposer.config
    if cfg["in_dim"] == backbone.feature_dim and tuple(cfg["feature_size"]) == tuple(backbone.spatial_size):
        return None
    return (
        f"the learned proposer reads a {cfg['in_dim']}-channel {tuple(cfg['feature_size'])} feature map; "
        f"{backbone.name} gives {backbone.feature_dim} x {tuple(backbone.spatial_size)}"
    )


def top_regions_as_candidates(
    top: TopRegions, i: int, width: int, height: int
) -> tuple[RegionCandidates, torch.Tensor]:
    """Image ``i``'s top-K as source-pixel ``RegionCandidates`` and their distributions (for compose_analysis)."""
    keep = top.mask[i]
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    boxes = (top.boxes[i][keep].cpu() * scale).numpy().astype(np.float32)
    return RegionCandidates(boxes, top.objectness[i][keep].cpu().numpy().astype(np.float32)), top.dists[i][keep].cpu()


def proposer_version(proposer: LearnedProposer) -> str:
    """ "learned@<12 hex>": a digest of the head's weights, recorded with every result."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(proposer.head.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().half().cpu().numpy().tobytes())
    return f"learned@{digest.hexdigest()[:12]}"
