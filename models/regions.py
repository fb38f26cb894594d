"""Affective regions (Yang et al., IEEE TMM 2018): proposals, clustering, scoring, fusion.

Pipeline per image (the composition lives in pipelines/; this module is the pure math):

1. ``propose_boxes``        object proposals with an objectness score (selective search or EdgeBoxes)
2. ``filter_proposals``     drop area < 800 px or aspect > 6 (original-image pixels)
3. ``cap_proposals``        keep the ``max_proposals`` (default 300) best by objectness, so step 4
                            stays fast (eigendecomposition is O(N^3): ~1k boxes would cost ~1 s)
4. ``iou_matrix`` -> ``spectral_cluster`` (m = 50) -> ``best_per_cluster`` by objectness
   (steps 3-4 together: ``representative_boxes``)
5. ``RegionScorer`` on ``roi_features`` gives an emotion distribution y per region;
   senti = 1 + sum_j y_j log y_j / log c;  AR = sqrt((1 - a) obj^2 + a senti^2), a = 0.6
6. ``top_k_regions`` (K = 8), fused with the global prediction: ``fuse_max``, ``fuse_sum``
   (beta = 0.3) or ``ConcatFusion``.

Boxes are (x0, y0, x1, y1) floats, x1/y1 exclusive (width = x1 - x0), as in ``schemas.results.Region``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch import nn

from models.fusion import masked_mean

__all__ = [
    "HAND_MADE_EDGES",
    "propose_boxes",
    "hand_made_edge_map",
    "filter_proposals",
    "cap_proposals",
    "iou_matrix",
    "spectral_cluster",
    "best_per_cluster",
    "representative_boxes",
    "senti_score",
    "ar_score",
    "top_k_regions",
    "fuse_max",
    "fuse_sum",
    "ConcatFusion",
    "RegionScorer",
    "roi_features",
]

#: Pass as ``edge_model`` to run EdgeBoxes on a hand-made (Canny-masked Sobel) edge map.
HAND_MADE_EDGES = "canny"

Array = np.ndarray | torch.Tensor


# ----------------------------------------------------------------------------------- proposals
def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA) -> contiguous H x W x 3 uint8 RGB."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        scale = 255.0 if image.dtype.kind == "f" and image.max(initial=0) <= 1.0 else 1.0
        image = np.clip(image.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def hand_made_edge_map(image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Edge magnitude E in [0, 1] (Sobel magnitude kept on Canny pixels) and orientation O in [0, pi).

    O is the gradient (edge-normal) direction mod pi, the convention of Dollar's edgeOrient /
    ``StructuredEdgeDetection.computeOrientation`` that EdgeBoxes expects. Stands in for the
    structured-edge model, whose file is not obtainable here.
    """
    gray = cv2.cvtColor(_as_rgb_uint8(image_rgb), cv2.COLOR_RGB2GRAY)
    smooth = cv2.GaussianBlur(gray.astype(np.float32) / 255.0, (0, 0), 1.0)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    magnitude = np.sqrt(gx**2 + gy**2)
    thin = cv2.Canny(np.clip(smooth * 255.0, 0, 255).astype(np.uint8), 30, 90) > 0
    edges = np.where(thin, magnitude / (magnitude.max() + 1e-12), 0.0).astype(np.float32)
    orientation = np.mod(np.arctan2(gy, gx), np.pi).astype(np.float32)
    return edges, orientation


@functools.lru_cache(maxsize=4)
def _structured_edge_detector(path: str) -> Any:
    # The one file read in models/: the structured-edge model (loaded once per path, then cached).
    return cv2.ximgproc.createStructuredEdgeDetection(path)


def _edge_boxes(small_rgb: np.ndarray, edge_model: Any, max_boxes: int, min_box_area: float):
    if isinstance(edge_model, str) and edge_model == HAND_MADE_EDGES:
        edges, orientation = hand_made_edge_map(small_rgb)
    else:
        detector = _structured_edge_detector(edge_model) if isinstance(edge_model, str) else edge_model
        edges = detector.detectEdges(small_rgb.astype(np.float32) / 255.0)
        orientation = detector.computeOrientation(edges)
        edges = detector.edgesNms(edges, orientation)
    generator = cv2.ximgproc.createEdgeBoxes()
    generator.setMaxBoxes(int(max_boxes))
    generator.setMinBoxArea(float(max(min_box_area, 1.0)))
    result = generator.getBoundingBoxes(edges, orientation)
    rects, scores = result if isinstance(result, tuple) else (result, None)
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    scores = np.ones(len(rects)) if scores is None else np.asarray(scores, dtype=np.float64).ravel()
    return rects, scores


# OpenCV's selective search draws from libc rand(), so the same image gives its boxes in a
# different order from call to call (and rank is our objectness). Seeding rand() right before each
# search makes it deterministic; the lock keeps concurrent searches from sharing the sequence.
_LIBC = ctypes.CDLL(None)
_RAND_LOCK = threading.Lock()
SELECTIVE_SEARCH_SEED = 12345


def _selective_search(small_rgb: np.ndarray, mode: str, max_boxes: int):
    with _RAND_LOCK:
        _LIBC.srand(SELECTIVE_SEARCH_SEED)
        return _selective_search_unlocked(small_rgb, mode, max_boxes)


def _selective_search_unlocked(small_rgb: np.ndarray, mode: str, max_boxes: int):
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(small_rgb, cv2.COLOR_RGB2BGR))
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    elif mode == "quality":
        search.switchToSelectiveSearchQuality()
    else:
        raise ValueError(f"mode must be 'fast' or 'quality', got {mode!r}")
    rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)
    n = len(rects)
    scores = 1.0 - np.arange(n, dtype=np.float64) / max(n, 1)  # rank -> objectness, 1 for the first
    return rects[:max_boxes], scores[:max_boxes]


def propose_boxes(
    image_rgb: np.ndarray,
    max_side: int = 300,
    mode: Literal["fast", "quality"] = "fast",
    edge_model: str | Any | None = None,
    max_boxes: int = 2000,
    min_area: float = 800.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Object proposals on an RGB array: (boxes [N, 4] float32 x0, y0, x1, y1, objectness [N] float32).

    The image is shrunk so its longer side is ``max_side`` (never enlarged); boxes are mapped back
    to ORIGINAL image pixels and clipped to it.

    * ``edge_model`` None: selective search (``mode`` "fast" or "quality"). It gives no score, so
      objectness is derived from its output rank r (0 = first, most object-like): 1 - r / N.
    * ``edge_model`` a structured-edge model path (or a built ``StructuredEdgeDetection``):
      EdgeBoxes on its edges; its box scores are the objectness. ``HAND_MADE_EDGES`` ("canny")
      runs EdgeBoxes on ``hand_made_edge_map`` instead. ``min_area`` (original pixels) is passed to
      EdgeBoxes as its minimum box area; ``filter_proposals`` still applies.
    """
    rgb = _as_rgb_uint8(image_rgb)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    # explicit target size: fx/fy rounding gives an empty image for very thin inputs (e.g. 1 x 500)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = rgb if scale == 1.0 else cv2.resize(rgb, target, interpolation=cv2.INTER_AREA)
    scale_y, scale_x = small.shape[0] / height, small.shape[1] / width
    if edge_model is None:
        rects, scores = _selective_search(small, mode, max_boxes)
    else:
        rects, scores = _edge_boxes(small, edge_model, max_boxes, min_area * scale_x * scale_y)
    boxes = np.empty((len(rects), 4), dtype=np.float64)
    boxes[:, 0] = rects[:, 0] / scale_x
    boxes[:, 1] = rects[:, 1] / scale_y
    boxes[:, 2] = (rects[:, 0] + rects[:, 2]) / scale_x
    boxes[:, 3] = (rects[:, 1] + rects[:, 3]) / scale_y
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes.astype(np.float32), scores.astype(np.float32)


def filter_proposals(
    boxes: np.ndarray, scores: np.ndarray, min_area: float = 800.0, max_aspect: float = 6.0
) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes with area < ``min_area`` or aspect max(w/h, h/w) > ``max_aspect``.

    Area is (x1 - x0) * (y1 - y0) in ORIGINAL image pixels (the coordinates ``propose_boxes``
    returns), so the threshold does not depend on the proposal resolution. Boundaries are kept
    (area == 800 and aspect == 6 stay). Empty boxes (w or h <= 0) are dropped.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores).ravel()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    valid = (w > 0) & (h > 0)
    safe_w, safe_h = np.where(valid, w, 1.0), np.where(valid, h, 1.0)
    aspect = np.maximum(safe_w / safe_h, safe_h / safe_w)
    keep = valid & (w * h >= min_area) & (aspect <= max_aspect)
    return boxes[keep].astype(np.float32), scores[keep]


def cap_proposals(boxes: np.ndarray, scores: np.ndarray, max_proposals: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """The ``max_proposals`` boxes with the highest objectness (stable: earlier box wins a tie)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[:max_proposals]
    return np.asarray(boxes)[order], np.asarray(scores)[order]


# -------------------------------------------------------------------------------- clustering
def iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """N x N intersection-over-union of (x0, y0, x1, y1) boxes (the clustering affinity); float64."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    iw = (np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])).clip(0)
    ih = (np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])).clip(0)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int = 3, max_iter: int = 100) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; labels of the run with the lowest inertia."""
    rng = np.random.default_rng(seed)
    n = len(x)
    sq_norms = (x**2).sum(1)
    best_labels, best_inertia = np.zeros(n, dtype=np.int64), np.inf
    for _ in range(n_init):
        picks = [int(rng.integers(n))]
        closest = ((x - x[picks[0]]) ** 2).sum(1)
        for _ in range(1, k):
            total = closest.sum()
            pick = int(rng.choice(n, p=closest / total)) if total > 0 else int(rng.integers(n))
            picks.append(pick)
            closest = np.minimum(closest, ((x - x[pick]) ** 2).sum(1))
        centers = x[picks].copy()
        labels = np.full(n, -1)
        for _ in range(max_iter):
            dist = sq_norms[:, None] - 2.0 * x @ centers.T + (centers**2).sum(1)[None, :]
            new_labels = dist.argmin(1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            counts = np.bincount(labels, minlength=k)
            sums = np.zeros_like(centers)
            np.add.at(sums, labels, x)
            filled = counts > 0
            centers[filled] = sums[filled] / counts[filled, None]
            # An empty cluster takes the point worst served by its centre.
            for c in np.flatnonzero(~filled):
                centers[c] = x[dist[np.arange(n), labels].argmax()]
        inertia = ((x - centers[labels]) ** 2).sum()
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def spectral_cluster(affinity: np.ndarray, m: int = 50, seed: int = 0) -> np.ndarray:
    """Normalised spectral clustering (Ng, Jordan, Weiss 2001) into at most ``m`` clusters.

    L = D^-1/2 A D^-1/2 (D = row sums of A), top-m eigenvectors as columns, rows normalised to
    unit length, k-means (k = m) on the rows. Unlike NJW the diagonal of A is kept (IoU of a box
    with itself = 1), so a box overlapping nothing still has degree 1 and forms its own cluster.
    With N <= m every box is its own cluster. Labels are 0..n_clusters-1 (empty clusters removed).
    """
    a = np.asarray(affinity, dtype=np.float64)
    n = len(a)
    if a.shape != (n, n):
        raise ValueError(f"affinity must be square, got {a.shape}")
    if n <= m:
        return np.arange(n, dtype=np.int64)
    a = (a + a.T) / 2.0
    inv_sqrt_degree = 1.0 / np.sqrt(np.maximum(a.sum(1), 1e-12))
    laplacian = inv_sqrt_degree[:, None] * a * inv_sqrt_degree[None, :]
    _, vectors = np.linalg.eigh(laplacian)  # ascending eigenvalues
    embedding = vectors[:, -m:]
    embedding /= np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    labels = _kmeans(embedding, m, seed)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def best_per_cluster(labels: np.ndarray, objectness: np.ndarray) -> np.ndarray:
    """Index of the highest-objectness box in each cluster (first index on ties), by cluster label."""
    labels = np.asarray(labels).ravel()
    objectness = np.asarray(objectness, dtype=np.float64).ravel()
    best = []
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        best.append(members[np.argmax(objectness[members])])
    return np.asarray(best, dtype=np.int64)


def representative_boxes(
    boxes: np.ndarray, objectness: np.ndarray, m: int = 50, max_proposals: int = 300, seed: int = 0
) -> np.ndarray:
    """Indices (into ``boxes``) of one best box per spectral cluster, after capping to the
    ``max_proposals`` best by objectness (see the module docstring for why)."""
    objectness = np.asarray(objectness, dtype=np.float64).ravel()
    top = np.argsort(-objectness, kind="stable")[:max_proposals]
    labels = spectral_cluster(iou_matrix(np.asarray(boxes)[top]), m=m, seed=seed)
    return top[best_per_cluster(labels, objectness[top])]


# ----------------------------------------------------------------------------------- scoring
def senti_score(y: Array) -> Array:
    """Sentiment certainty of a distribution y over c classes: 1 + sum_j y_j log y_j / log c.

    This is 1 minus the entropy in base c: 1 = one certain class, 0 = uniform. The paper writes
    1 + sum y log y and normalises by log c for c > 2; dividing by log c for every c >= 2 is the
    same as its base-2 logarithm when c = 2. 0 log 0 = 0. Works on [..., c], numpy or torch.
    """
    t = torch.as_tensor(y, dtype=torch.float64) if isinstance(y, np.ndarray) else y
    c = t.shape[-1]
    if c < 2:
        raise ValueError("senti_score needs at least 2 classes")
    # y log y with 0 log 0 = 0, as torch.where rather than torch.special.xlogy, which ONNX cannot export
    plogp = torch.where(t > 0, t * t.log(), torch.zeros_like(t))
    score = (1.0 + plogp.sum(dim=-1) / math.log(c)).clamp(0.0, 1.0)
    return score.numpy() if isinstance(y, np.ndarray) else score


def ar_score(objectness: Array | float, senti: Array | float, alpha: float = 0.6) -> Array | float:
    """Affective-region score AR = sqrt((1 - alpha) obj^2 + alpha senti^2), alpha = 0.6."""
    return ((1.0 - alpha) * objectness**2 + alpha * senti**2) ** 0.5


def top_k_regions(scores: Array, k: int = 8) -> Array:
    """Indices of the ``k`` highest scores, best first (earlier index wins a tie)."""
    if isinstance(scores, torch.Tensor):
        return torch.as_tensor(top_k_regions(scores.detach().cpu().numpy(), k), device=scores.device)
    return np.argsort(-np.asarray(scores, dtype=np.float64).ravel(), kind="stable")[:k]


# ------------------------------------------------------------------------------------ fusion
def fuse_max(global_probs: torch.Tensor, region_probs: torch.Tensor) -> torch.Tensor:
    """Max fusion: q_j = max(g_j, max_k r_kj), then q / sum(q) so the result is a distribution.

    ``global_probs`` [..., c], ``region_probs`` [..., K, c]; K = 0 returns the global prediction.
    """
    stacked = torch.cat([global_probs.unsqueeze(-2), region_probs], dim=-2)
    fused = stacked.amax(dim=-2)
    return fused / fused.sum(dim=-1, keepdim=True)


def fuse_sum(
    global_probs: torch.Tensor,
    region_probs: torch.Tensor,
    region_weights: torch.Tensor | None = None,
    beta: float = 0.3,
) -> torch.Tensor:
    """Sum fusion: (1 - beta) g + beta r_bar, beta = 0.3.

    r_bar is the plain mean of the top-K region predictions [..., K, c] (as in the paper) or,
    given ``region_weights`` [..., K] (e.g. AR scores), sum_k w_k r_k / sum_k w_k.
    With K = 0 (or all weights 0) the global prediction is returned.
    """
    if region_probs.shape[-2] == 0:
        return global_probs
    if region_weights is None:
        region_weights = torch.ones(region_probs.shape[:-1], dtype=region_probs.dtype, device=region_probs.device)
    w = region_weights.to(region_probs.dtype).unsqueeze(-1)
    total = w.sum(dim=-2)
    r_bar = (w * region_probs).sum(dim=-2) / total.clamp_min(1e-12)
    fused = (1.0 - beta) * global_probs + beta * r_bar
    return torch.where(total > 0, fused, global_probs)


class ConcatFusion(nn.Module):
    """Concatenation fusion: logits = W [global feature ; mean of region features] + b.

    forward(global_feat [B, Cg], region_feats [B, K, Cr], region_mask [B, K] bool, True = real
    region) -> logits [B, num_classes]. No region gives a zero region feature.
    """

    def __init__(self, global_dim: int, region_dim: int, num_classes: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(global_dim + region_dim, num_classes)

    def forward(
        self, global_feat: torch.Tensor, region_feats: torch.Tensor, region_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        region = masked_mean(region_feats, region_mask)
        return self.linear(self.dropout(torch.cat([global_feat, region], dim=-1)))


class RegionScorer(nn.Module):
    """RoI feature [N, C] -> distribution y [N, num_classes] (softmax), linear or a one-hidden-layer MLP."""

    def __init__(self, in_dim: int, num_classes: int = 8, hidden_dim: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_dim > 0:
            self.net = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(in_dim, hidden_dim),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden_dim, num_classes),
            )
        else:
            self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))

    def forward(self, roi_feats: torch.Tensor, return_logits: bool = False) -> torch.Tensor:
        logits = self.net(roi_feats)
        return logits if return_logits else logits.softmax(dim=-1)


# ------------------------------------------------------------------------------------ RoI align
def roi_features(
    feat_map: torch.Tensor,
    boxes: Sequence[torch.Tensor] | torch.Tensor,
    spatial_scale: float = 1.0,
    output_size: tuple[int, int] = (2, 2),
    sampling_ratio: int = 2,
    pool: bool = True,
) -> torch.Tensor:
    """RoI-align in pure torch (``grid_sample``); features of every box, images in order.

    ``boxes``: one [n_i, 4] tensor (x0, y0, x1, y1) per image (a single tensor if B == 1), in
    image pixels; ``spatial_scale`` maps them to feature-map coordinates (e.g. 7 / 224). Feature
    coordinates are continuous: cell (i, j) covers [j, j+1) x [i, i+1) with its value at the
    centre (j + 0.5, i + 0.5) (torchvision's ``aligned=True``). Each box is split into
    output_size bins; each bin averages sampling_ratio x sampling_ratio bilinear samples at the
    centres of its sub-cells; samples outside the map take the border value (boxes are expected
    inside the image). Returns [N, C] (bins averaged) when ``pool`` else [N, C, oh, ow].
    """
    if feat_map.ndim != 4:
        raise ValueError(f"feat_map must be [B, C, H, W], got {tuple(feat_map.shape)}")
    if isinstance(boxes, torch.Tensor):
        boxes = [boxes]
    if len(boxes) != feat_map.shape[0]:
        raise ValueError(f"{len(boxes)} box sets for a batch of {feat_map.shape[0]}")
    _, channels, height, width = feat_map.shape
    out_h, out_w = output_size
    per_image = []
    for image_index, image_boxes in enumerate(boxes):
        b = torch.as_tensor(image_boxes, dtype=feat_map.dtype, device=feat_map.device).reshape(-1, 4)
        n = b.shape[0]
        if n == 0:
            per_image.append(feat_map.new_zeros((0, channels, out_h, out_w)))
            continue
        b = b * spatial_scale
        steps_x = (torch.arange(out_w * sampling_ratio, dtype=b.dtype, device=b.device) + 0.5) / (
            out_w * sampling_ratio
        )
        steps_y = (torch.arange(out_h * sampling_ratio, dtype=b.dtype, device=b.device) + 0.5) / (
            out_h * sampling_ratio
        )
        xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * steps_x  # [n, ow * s]
        ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * steps_y  # [n, oh * s]
        gx = (2.0 * xs / width - 1.0)[:, None, :].expand(n, ys.shape[1], xs.shape[1])
        gy = (2.0 * ys / height - 1.0)[:, :, None].expand(n, ys.shape[1], xs.shape[1])
        grid = torch.stack([gx, gy], dim=-1).reshape(1, n * ys.shape[1], xs.shape[1], 2)
        sampled = nn.functional.grid_sample(
            feat_map[image_index : image_index + 1], grid, mode="bilinear", padding_mode="border", align_corners=False
        )  # [1, C, n * oh * s, ow * s]
        sampled = sampled.reshape(channels, n, out_h, sampling_ratio, out_w, sampling_ratio).mean(dim=(3, 5))
        per_image.append(sampled.permute(1, 0, 2, 3))
    features = torch.cat(per_image, dim=0)
    return features.mean(dim=(2, 3)) if pool else features
