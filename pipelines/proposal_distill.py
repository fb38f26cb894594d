"""Distil selective search into the learned proposer, and measure how well it agrees with the teacher.

Targets per anchor (from ``pipelines.proposal_teacher``): objectness = the anchor's best IoU with the
teacher's AR top-8 boxes (soft binary cross-entropy), box deltas towards that box where IoU >= 0.4
(smooth L1). Horizontal flips of the feature map double the data. Recall: the share of the teacher's
top-8 boxes matched at IoU >= 0.5 by the learned path's own top-8 (after AR selection), and by its
candidates before selection.

    python -m pipelines.proposal_distill --teacher artifacts/proposals/teacher-twitter1.npz
    python -m pipelines.proposal_distill --teacher ... --recall-only    # measure the shipped proposer only
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import trange

from models.moodnet import MoodHeads
from models.proposals import LearnedProposer, box_recall, encode_boxes, pairwise_iou
from pipelines.proposal_teacher import TeacherCache
from pipelines.regions import learned_top_regions

POSITIVE_IOU = 0.4


def _targets(anchors: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor):
    iou = pairwise_iou(anchors.expand(teacher.shape[0], -1, -1), teacher)  # [B, N, 8]
    iou = iou.masked_fill(~mask[:, None, :], 0.0)
    best, match = iou.max(dim=-1)
    matched = teacher.gather(1, match[..., None].expand(-1, -1, 4))
    return best, encode_boxes(anchors.expand_as(matched), matched)


def _flip(fmap: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flipped = boxes.clone()
    flipped[..., 0], flipped[..., 2] = 1.0 - boxes[..., 2], 1.0 - boxes[..., 0]
    return fmap.flip(-1), flipped


def held_out_split(n: int, seed: int = 0, fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of the teacher's images; held-out is the first ``fraction`` of a seeded shuffle."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(n * fraction)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def train_proposer(
    train: TeacherCache, epochs: int = 40, batch_size: int = 32, lr: float = 2e-3, seed: int = 0
) -> LearnedProposer:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LearnedProposer(train.feat_maps.shape[1], tuple(train.feat_maps.shape[2:]))
    optim = torch.optim.AdamW(model.head.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, epochs)
    fmaps, boxes = torch.as_tensor(train.feat_maps), torch.as_tensor(train.top_boxes)
    masks = torch.as_tensor(train.top_mask)
    model.train()
    for _ in trange(epochs, desc="proposer", unit="epoch"):
        order = torch.as_tensor(rng.permutation(len(fmaps)))
        for start in range(0, len(fmaps), batch_size):
            sel = order[start : start + batch_size]
            fmap, box, mask = fmaps[sel].float(), boxes[sel], masks[sel]
            if rng.random() < 0.5:
                fmap, box = _flip(fmap, box)
            best, deltas_t = _targets(model.anchors, box, mask)
            logits, deltas = model.head(fmap)
            obj_loss = F.binary_cross_entropy_with_logits(logits, best)
            positive = best >= POSITIVE_IOU
            reg_loss = F.smooth_l1_loss(deltas[positive], deltas_t[positive], beta=0.1) if positive.any() else 0.0
            loss = obj_loss + reg_loss
            optim.zero_grad()
            loss.backward()
            optim.step()
        sched.step()
    return model.eval()


def teacher_recall(
    proposer: LearnedProposer, heads: MoodHeads, test: TeacherCache, iou: float = 0.5, top_k: int = 8
) -> dict[str, float]:
    """Recall of the teacher's top-8 at ``iou`` by the learned top-8 and by all learned candidates."""
    with torch.inference_mode():
        fmap = torch.as_tensor(test.feat_maps).float()
        sizes = torch.as_tensor(test.sizes)
        boxes, objectness, mask = proposer(fmap, sizes)
        top = learned_top_regions(heads, fmap, boxes, objectness, mask, top_k)
        teacher, tmask = torch.as_tensor(test.top_boxes), torch.as_tensor(test.top_mask)
        out = {}
        for name, cand, cmask in (("top8", top.boxes, top.mask), ("candidates", boxes, mask)):
            matched, total = box_recall(teacher, tmask, cand, cmask, iou)
            out[f"recall@{iou}_{name}"] = matched / total
        return out


def save_proposer(model: LearnedProposer, path: Path, card: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() for k, v in model.head.state_dict().items()}
    torch.save({"config": model.config, "state_dict": state, "card": card}, path)
    lines = [
        "# moodwatch learned region proposals — model card",
        "",
        "An objectness + box head on EfficientNet-Lite0's 7x7x1280 map (models/proposals.py), fp16 weights, "
        "distilled from selective search (`python -m pipelines.proposal_distill`).",
        "",
    ]
    lines += [f"- **{k}**: {json.dumps(v) if isinstance(v, dict) else v}" for k, v in card.items()]
    lines += ["- **config**: " + json.dumps(model.config)]
    (path.parent / "PROPOSALS_MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, default=Path("artifacts/proposals/teacher-twitter1.npz"))
    parser.add_argument("--heads", type=Path, default=Path(__file__).resolve().parents[1] / "models/weights/heads.pt")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "models/weights/proposals.pt")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=float, default=0.2)
    parser.add_argument(
        "--recall-only",
        action="store_true",
        help="train nothing: print the teacher recall of the proposer at --out on the held-out images",
    )
    args = parser.parse_args()
    from pipelines.checkpoints import load_heads
    from pipelines.regions import load_proposer

    cache = TeacherCache.load(args.teacher)
    train_idx, test_idx = held_out_split(len(cache.names), args.seed, args.held_out)
    train, test = cache.subset(train_idx), cache.subset(test_idx)
    heads, _ = load_heads(args.heads)
    if args.recall_only:
        recall = teacher_recall(load_proposer(args.out), heads, test)
        print(json.dumps({"proposer": str(args.out), "held_out_images": len(test.names), **recall}, indent=2))
        return
    model = train_proposer(train, epochs=args.epochs, seed=args.seed)
    recall = teacher_recall(model, heads, test)
    card = {
        "created_at": datetime.now(UTC).isoformat(),
        "seed": args.seed,
        "epochs": args.epochs,
        "teacher": "OpenCV selective search (fast, 200 px) -> filters -> spectral clusters (m=50) -> AR top-8 of "
        "the shipped heads (models/weights/heads.pt)",
        "data": f"twitter1-dev three-agree images: {len(train.names)} train, {len(test.names)} held out",
        "held_out": recall,
    }
    save_proposer(model, args.out, card)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
