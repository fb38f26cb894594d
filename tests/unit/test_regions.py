"""Affective regions (models/regions.py): proposals, filters, clustering, scores, fusion, RoI align."""

import math

import cv2
import numpy as np
import pytest
import torch

from models.regions import (
    HAND_MADE_EDGES,
    ConcatFusion,
    RegionScorer,
    ar_score,
    best_per_cluster,
    cap_proposals,
    filter_proposals,
    fuse_max,
    fuse_sum,
    iou_matrix,
    propose_boxes,
    representative_boxes,
    roi_features,
    senti_score,
    spectral_cluster,
    top_k_regions,
)

RECTS = [(60, 80, 260, 300), (360, 60, 580, 200)]  # drawn on a 640 x 480 image, x1/y1 exclusive


def _synthetic_image():
    image = np.full((480, 640, 3), 210, np.uint8)
    cv2.rectangle(image, RECTS[0][:2], (RECTS[0][2] - 1, RECTS[0][3] - 1), (200, 30, 30), -1)
    cv2.rectangle(image, RECTS[1][:2], (RECTS[1][2] - 1, RECTS[1][3] - 1), (20, 140, 40), -1)
    return image


@pytest.mark.parametrize("edge_model", [None, HAND_MADE_EDGES])
def test_propose_boxes_on_a_synthetic_image(edge_model):
    boxes, scores = propose_boxes(_synthetic_image(), max_side=160, edge_model=edge_model)
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) == len(scores) > 0
    assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 2] <= 640)
    assert np.all(boxes[:, 1] >= 0) and np.all(boxes[:, 3] <= 480)
    assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
    assert np.all(scores > 0)
    # boxes come back in original pixels: each drawn rectangle is found (at 1/4 scale internally)
    best = iou_matrix(np.vstack([np.array(RECTS, np.float32), boxes]))[:2, 2:].max(axis=1)
    assert np.all(best > 0.7), best


def test_selective_search_objectness_comes_from_rank():
    _, scores = propose_boxes(_synthetic_image(), max_side=120)
    n = len(scores)
    assert np.allclose(scores, 1.0 - np.arange(n) / n)


def test_propose_boxes_accepts_gray_and_float_images():
    gray = cv2.cvtColor(_synthetic_image(), cv2.COLOR_RGB2GRAY)
    assert len(propose_boxes(gray, max_side=100)[0]) > 0
    assert len(propose_boxes(_synthetic_image() / 255.0, max_side=100, max_boxes=5)[0]) == 5
    with pytest.raises(ValueError):
        propose_boxes(_synthetic_image(), max_side=100, mode="slow")


def test_filter_proposals_at_the_boundaries():
    boxes = np.array(
        [
            [0, 0, 40, 20],  # area 800, kept
            [0, 0, 39.9, 20],  # area 798, dropped
            [0, 0, 120, 20],  # aspect 6.0, kept
            [0, 0, 121, 20],  # aspect 6.05, dropped
            [0, 0, 20, 121],  # tall aspect 6.05, dropped
            [10, 10, 10, 200],  # empty, dropped
        ],
        dtype=np.float32,
    )
    kept, scores = filter_proposals(boxes, np.arange(6.0))
    assert scores.tolist() == [0.0, 2.0]
    assert np.array_equal(kept, boxes[[0, 2]])


def test_cap_proposals_keeps_the_best():
    boxes = np.arange(20, dtype=np.float32).reshape(5, 4)
    capped, scores = cap_proposals(boxes, np.array([0.1, 0.9, 0.5, 0.9, 0.2]), max_proposals=3)
    assert scores.tolist() == [0.9, 0.9, 0.5]
    assert np.array_equal(capped, boxes[[1, 3, 2]])


def test_iou_matrix_hand_computed():
    iou = iou_matrix(np.array([[0, 0, 2, 2], [1, 1, 3, 3], [5, 5, 6, 6]]))
    assert np.allclose(np.diag(iou), 1.0)
    assert iou[0, 1] == pytest.approx(1 / 7) and iou[1, 0] == pytest.approx(1 / 7)
    assert iou[0, 2] == 0.0


def _two_groups(rng, n=30):
    a = np.array([20, 20, 120, 120]) + rng.uniform(-8, 8, size=(n, 4))
    b = np.array([300, 250, 420, 380]) + rng.uniform(-8, 8, size=(n, 4))
    return np.vstack([a, b])


def test_spectral_clustering_separates_two_groups():
    boxes = _two_groups(np.random.default_rng(0))
    labels = spectral_cluster(iou_matrix(boxes), m=2, seed=0)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1
    assert labels[0] != labels[30]


def test_spectral_clustering_few_boxes_and_determinism():
    assert spectral_cluster(np.eye(4), m=50).tolist() == [0, 1, 2, 3]
    boxes = _two_groups(np.random.default_rng(1))
    a = spectral_cluster(iou_matrix(boxes), m=6, seed=3)
    assert np.array_equal(a, spectral_cluster(iou_matrix(boxes), m=6, seed=3))
    assert a.max() < 6


def test_best_per_cluster_and_representatives():
    labels = np.array([0, 1, 0, 1, 2])
    assert best_per_cluster(labels, np.array([0.1, 0.9, 0.5, 0.2, 0.3])).tolist() == [2, 1, 4]
    rng = np.random.default_rng(2)
    boxes = _two_groups(rng)
    objectness = rng.random(60)
    reps = representative_boxes(boxes, objectness, m=2, max_proposals=60)
    assert sorted(reps.tolist()) == sorted([int(np.argmax(objectness[:30])), 30 + int(np.argmax(objectness[30:]))])


def test_senti_score_values():
    assert senti_score(np.eye(8)[3]) == pytest.approx(1.0)
    assert senti_score(np.full(8, 1 / 8)) == pytest.approx(0.0, abs=1e-12)
    assert senti_score(np.array([0.5, 0.5])) == pytest.approx(0.0, abs=1e-12)
    assert senti_score(np.array([0.5, 0.5, 0.0, 0.0])) == pytest.approx(0.5)  # 1 - ln2 / ln4
    # c = 2: 1 + (0.9 ln 0.9 + 0.1 ln 0.1) / ln 2 = 1 - H2(0.1)
    assert float(senti_score(torch.tensor([0.9, 0.1], dtype=torch.float64))) == pytest.approx(1 - 0.468996, abs=1e-6)
    batch = senti_score(torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert batch.shape == (2,)


def test_ar_score_values():
    assert ar_score(0.5, 1.0) == pytest.approx(math.sqrt(0.4 * 0.25 + 0.6 * 1.0))  # 0.83666
    assert ar_score(1.0, 0.0) == pytest.approx(math.sqrt(0.4))
    assert ar_score(0.0, 1.0, alpha=0.3) == pytest.approx(math.sqrt(0.3))
    assert np.allclose(ar_score(np.array([1.0, 0.2]), np.array([1.0, 0.2])), [1.0, 0.2])


def test_top_k_regions():
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    assert top_k_regions(scores, k=3).tolist() == [1, 3, 2]
    assert top_k_regions(scores, k=8).tolist() == [1, 3, 2, 0, 4]
    assert top_k_regions(torch.tensor(scores), k=2).tolist() == [1, 3]


G = torch.tensor([0.6, 0.3, 0.1])
R = torch.tensor([[0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])


def test_fuse_max():
    # elementwise max [0.6, 0.7, 0.8], renormalised by 2.1
    assert torch.allclose(fuse_max(G, R), torch.tensor([0.6, 0.7, 0.8]) / 2.1)
    assert torch.allclose(fuse_max(G, R[:0]), G)
    assert fuse_max(G.expand(4, 3), R.expand(4, 2, 3)).shape == (4, 3)


def test_fuse_sum():
    # 0.7 * g + 0.3 * mean(r) = 0.7 * [0.6, 0.3, 0.1] + 0.3 * [0.15, 0.4, 0.45]
    assert torch.allclose(fuse_sum(G, R), torch.tensor([0.465, 0.33, 0.205]))
    # weights [1, 3]: r_bar = [0.125, 0.25, 0.625]
    assert torch.allclose(fuse_sum(G, R, torch.tensor([1.0, 3.0])), torch.tensor([0.4575, 0.285, 0.2575]))
    assert torch.allclose(fuse_sum(G, R, beta=0.0), G)
    assert torch.allclose(fuse_sum(G, R[:0]), G)
    assert torch.allclose(fuse_sum(G, R, torch.zeros(2)), G)


def test_concat_fusion():
    torch.manual_seed(0)
    fusion = ConcatFusion(global_dim=4, region_dim=3, num_classes=2).eval()
    g, regions = torch.randn(2, 4), torch.randn(2, 5, 3)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    out = fusion(g, regions, mask)
    expected_region = torch.stack([regions[0].mean(0), regions[1, :2].mean(0)])
    assert torch.allclose(out, fusion.linear(torch.cat([g, expected_region], -1)), atol=1e-6)


def test_region_scorer():
    torch.manual_seed(0)
    scorer = RegionScorer(in_dim=6, hidden_dim=8).eval()
    y = scorer(torch.randn(5, 6))
    assert y.shape == (5, 8) and torch.allclose(y.sum(-1), torch.ones(5), atol=1e-6)
    assert RegionScorer(in_dim=6, num_classes=2)(torch.randn(3, 6), return_logits=True).shape == (3, 2)


def _column_map(channels=2, height=4, width=4):
    """Cell (i, j) holds j in every channel (its value sits at x = j + 0.5)."""
    return torch.arange(width, dtype=torch.float32).expand(1, channels, height, width).clone()


def test_roi_features_on_a_constant_map():
    fmap = torch.full((1, 3, 5, 5), 2.5)
    out = roi_features(fmap, [torch.tensor([[0.3, 1.0, 4.2, 3.3], [1.0, 1.0, 2.0, 2.0]])])
    assert torch.allclose(out, torch.full((2, 3), 2.5))


def test_roi_features_on_a_linear_map_hand_computed():
    fmap = _column_map()
    # box x in [1, 3]: 2 x 2 bins, 2 samples per bin: x = 1.25, 1.75 | 2.25, 2.75 -> values x - 0.5
    bins = roi_features(fmap, torch.tensor([[1.0, 0.0, 3.0, 2.0]]), output_size=(2, 2), pool=False)
    assert bins.shape == (1, 2, 2, 2)
    assert torch.allclose(bins[0, 0], torch.tensor([[1.0, 2.0], [1.0, 2.0]]))
    pooled = roi_features(fmap, torch.tensor([[1.0, 0.0, 3.0, 2.0]]))
    assert torch.allclose(pooled, torch.tensor([[1.5, 1.5]]))
    # image coordinates with spatial_scale: the same box at twice the resolution
    scaled = roi_features(fmap, torch.tensor([[2.0, 0.0, 6.0, 4.0]]), spatial_scale=0.5)
    assert torch.allclose(scaled, pooled)
    # at the border: x samples 0.25, 0.75 -> 0.5 - 0.5 = -0.25 clamps to cell 0 (value 0), 0.25 -> mean 0.125
    edge = roi_features(fmap, torch.tensor([[0.0, 0.0, 1.0, 1.0]]), output_size=(1, 1))
    assert torch.allclose(edge, torch.tensor([[0.125, 0.125]]))


def test_roi_features_batches_and_gradients():
    fmap = torch.cat([_column_map(), 10 + _column_map()]).requires_grad_(True)
    boxes = [torch.tensor([[1.0, 0.0, 3.0, 2.0]]), torch.tensor([[1.0, 0.0, 3.0, 2.0]] * 2)]
    out = roi_features(fmap, boxes, output_size=(3, 3))
    assert out.shape == (3, 2)
    assert torch.allclose(out[:, 0], torch.tensor([1.5, 11.5, 11.5]))
    out.sum().backward()
    assert fmap.grad is not None and float(fmap.grad.abs().sum()) > 0
    empty = roi_features(fmap[:1].detach(), [torch.zeros((0, 4))])
    assert empty.shape == (0, 2)
    with pytest.raises(ValueError):
        roi_features(fmap, [torch.zeros((1, 4))])
