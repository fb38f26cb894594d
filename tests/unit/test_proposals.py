"""Learned proposals: anchors, box coding, filters, batched NMS, batched RoI-align and AR top-K (plain tensors)."""

import math

import torch

from models.proposals import (
    DEFAULT_SHAPES,
    LearnedProposer,
    affective_top_k,
    anchor_grid,
    batched_fast_nms,
    batched_roi_features,
    box_recall,
    decode_boxes,
    encode_boxes,
    pairwise_iou,
    select_proposals,
    spatial_peaks,
    valid_box_mask,
)
from models.regions import ar_score, roi_features, senti_score


def test_anchor_grid_is_cell_major_and_centred():
    anchors = anchor_grid(7, 7)
    assert anchors.shape == (49 * len(DEFAULT_SHAPES), 4)
    first = anchors[: len(DEFAULT_SHAPES)]
    centres = (first[:, :2] + first[:, 2:]) / 2
    assert torch.allclose(centres, torch.full_like(centres, 0.5 / 7))
    last = anchors[-1]
    assert torch.allclose((last[:2] + last[2:]) / 2, torch.tensor([6.5 / 7, 6.5 / 7]))


def test_encode_decode_round_trip_and_clip():
    anchors = torch.tensor([[0.2, 0.2, 0.6, 0.5], [0.1, 0.3, 0.4, 0.9]])
    targets = torch.tensor([[0.25, 0.1, 0.7, 0.55], [0.05, 0.35, 0.5, 0.8]])
    assert torch.allclose(decode_boxes(anchors, encode_boxes(anchors, targets)), targets, atol=1e-5)
    outside = decode_boxes(anchors[:1], torch.tensor([[1.5, 0.0, 0.5, 0.0]]))
    assert outside.min() >= 0 and outside.max() <= 1


def test_valid_box_mask_uses_source_pixels():
    boxes = torch.tensor([[[0.0, 0.0, 0.1, 0.1], [0.0, 0.0, 0.9, 0.1], [0.0, 0.0, 0.5, 0.5]]])
    small = valid_box_mask(boxes, torch.tensor([[200, 200]]))  # 20x20 = 400 px < 800; aspect 9 > 6
    assert small.tolist() == [[False, False, True]]
    large = valid_box_mask(boxes, torch.tensor([[1000, 1000]]))  # 100x100 ok; aspect still 9
    assert large.tolist() == [[True, False, True]]


def test_fast_nms_drops_overlaps_per_image_and_ignores_invalid():
    boxes = torch.tensor(
        [
            [[0.0, 0.0, 0.5, 0.5], [0.01, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]],
            [[0.0, 0.0, 0.5, 0.5], [0.01, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]],
        ]
    )
    scores = torch.tensor([[0.9, 0.8, 0.1], [float("-inf"), 0.8, 0.1]])
    keep = batched_fast_nms(boxes, scores, 0.6)
    assert keep.tolist() == [[True, False, True], [False, True, True]]


def test_select_proposals_pads_and_masks():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.49, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.01, 0.01]]])
    logits = torch.tensor([[3.0, 2.0, 1.0, 5.0]])
    out, obj, mask = select_proposals(boxes, logits, torch.tensor([[400, 400]]), keep=4, iou_threshold=0.5)
    assert mask.tolist() == [[True, True, False, False]]  # the tiny box is filtered, the near-copy suppressed
    assert torch.allclose(out[0, 0], boxes[0, 0]) and torch.allclose(out[0, 1], boxes[0, 2])
    assert math.isclose(float(obj[0, 0]), 1 / (1 + math.exp(-3.0)), rel_tol=1e-6)
    assert float(obj[0, 2:].abs().sum()) == 0.0


def test_batched_roi_features_match_per_image_roi_align():
    torch.manual_seed(0)
    fmap = torch.randn(2, 5, 7, 7)
    boxes = torch.tensor([[[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]], [[0.3, 0.3, 0.5, 0.8], [0.5, 0.1, 0.9, 0.4]]])
    batched = batched_roi_features(fmap, boxes)
    reference = roi_features(fmap, [boxes[0] * 7, boxes[1] * 7], spatial_scale=1.0, output_size=(2, 2))
    assert torch.allclose(batched.reshape(-1, 5), reference, atol=1e-5)


def test_affective_top_k_matches_the_paper_formulas():
    dists = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]]])
    objectness = torch.tensor([[0.2, 0.9, 0.95]])
    mask = torch.tensor([[True, True, False]])
    idx, ar, senti, top_mask = affective_top_k(dists, objectness, mask, k=3)
    expected = ar_score(objectness[0], senti_score(dists[0]), 0.6)
    assert idx[0, :2].tolist() == sorted([0, 1], key=lambda j: -float(expected[j]))
    assert torch.allclose(ar[0, :2], expected[idx[0, :2]], atol=1e-6)
    assert torch.allclose(senti[0, :2], senti_score(dists[0])[idx[0, :2]], atol=1e-6)
    assert top_mask.tolist() == [[True, True, False]]


def test_learned_proposer_gives_boxes_inside_the_image():
    torch.manual_seed(0)
    proposer = LearnedProposer(16, (7, 7), keep=10).eval()
    with torch.no_grad():
        boxes, obj, mask = proposer(torch.randn(3, 16, 7, 7), torch.tensor([[640, 480], [100, 300], [1024, 1024]]))
    assert boxes.shape == (3, 10, 4) and obj.shape == mask.shape == (3, 10)
    assert mask.any(dim=1).all()
    assert boxes.min() >= 0 and boxes.max() <= 1
    kept = boxes[mask]
    assert ((kept[:, 2] > kept[:, 0]) & (kept[:, 3] > kept[:, 1])).all()
    iou = pairwise_iou(boxes[0][mask[0]], boxes[0][mask[0]])
    assert (iou.triu(1) <= proposer.iou_threshold + 1e-6).all()


def test_pairwise_iou_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 7, 4, generator=g), torch.rand(2, 5, 4, generator=g)
    a[..., 2:] += a[..., :2]
    b[..., 2:] += b[..., :2]
    got = pairwise_iou(a, b)
    for n in range(2):
        for i in range(7):
            for j in range(5):
                (x0, y0, x1, y1), (u0, v0, u1, v1) = a[n, i].tolist(), b[n, j].tolist()
                inter = max(0.0, min(x1, u1) - max(x0, u0)) * max(0.0, min(y1, v1) - max(y0, v0))
                union = (x1 - x0) * (y1 - y0) + (u1 - u0) * (v1 - v0) - inter
                assert math.isclose(float(got[n, i, j]), inter / union, rel_tol=1e-5, abs_tol=1e-7)


def test_spatial_peaks_keep_the_local_maxima_of_each_anchor_shape():
    g = torch.Generator().manual_seed(1)
    h, w, a = 6, 5, 3
    logits = torch.randn(2, h * w * a, generator=g)
    kept = spatial_peaks(logits, h, w, a).isfinite().reshape(2, h, w, a)
    grid = logits.reshape(2, h, w, a)
    for n in range(2):
        for k in range(a):
            assert kept[n, :, :, k].flatten()[grid[n, :, :, k].flatten().argmax()]  # the best box always stays
            for y in range(h):
                for x in range(w):
                    window = grid[n, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2, k]
                    assert bool(kept[n, y, x, k]) == bool(grid[n, y, x, k] >= window.max())


def test_box_recall_counts_reference_boxes_matched_at_the_threshold():
    reference = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.5, 0.5, 1.0]]])
    ref_mask = torch.tensor([[True, True, False]])  # the third slot is empty: not counted
    found = torch.tensor([[[0.0, 0.0, 0.5, 0.4], [0.5, 0.5, 1.0, 0.7], [0.0, 0.5, 0.5, 1.0]]])
    # IoU 0.8 with the first, 0.4 with the second; the third found box matches only the empty slot
    assert box_recall(reference, ref_mask, found, torch.tensor([[True, True, True]])) == (1, 2)
    assert box_recall(reference, ref_mask, found, torch.tensor([[False, True, True]])) == (0, 2)
    assert box_recall(reference, ref_mask, found, torch.ones(1, 3, dtype=torch.bool), iou=0.39) == (2, 2)
    assert box_recall(reference, ref_mask, found[:, :0], torch.zeros(1, 0, dtype=torch.bool)) == (0, 2)
