"""Fine-tune trained heads on moderators' labels: the JSONL of `moodwatch reviews export`.

What supervises what:
- MIRA polarity head: the person's polarity (positive / neutral / negative for the three-way heads of
  schema v2; a two-way checkpoint from before skips "neutral"), cross-entropy from the current weights
  at a small learning rate; the thumbnails carry no post text, so this is the image-only case;
- distribution head: the EW-MTCNN label distribution of the person's dominant emotion (the wheel
  prior of that Mikels emotion, sigma 0.6), loss (1 - lambda) CE + lambda KL; Emotion6-only labels
  (joy, surprise, neutral) do not train it;
- the aligned encoder and the region scorer are kept as they are.

Images: a `file:` reference under `image_root` when given and present, else the stored thumbnail
(<= 256 px; the backbone sees 224 px anyway). URLs are never fetched here. When there are at least
`min_holdout` labelled posts, a seeded fifth is held out and the report gives the polarity accuracy
on it before and after, so the model card says whether the reviews helped.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from models.emotions import multitask_loss, wheel_prior
from models.encoders import ImageBackbone
from models.moodnet import POLARITY3_CLASSES, POLARITY_CLASSES, MoodHeads
from pipelines.retrieval import SentenceDatabase
from pipelines.train import TrainConfig, _fit, retrieve
from schemas.emotions import MIKELS_EMOTIONS
from schemas.reviews import ReviewExportV1


def polarity_index(heads: MoodHeads) -> dict[str, int]:
    """A label's class index in these heads: three-way (positive, neutral, negative) since schema v2; a two-way
    checkpoint from before has no neutral class, so its neutral labels train nothing."""
    classes = POLARITY3_CLASSES if heads.config.num_polarities == 3 else POLARITY_CLASSES
    return {name: i for i, name in enumerate(classes)}


class ReviewExportError(ValueError):
    pass


@dataclass(frozen=True)
class ReviewTuneConfig:
    epochs: int = 10
    lr: float = 3e-4
    weight_decay: float = 0.01
    batch_size: int = 16
    lam: float = 0.7
    sigma: float = 0.6
    seed: int = 0
    min_holdout: int = 20


def load_export(path: Path) -> list[ReviewExportV1]:
    """Every line of the export, validated; a bad line is an error naming its line number."""
    records = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(ReviewExportV1.model_validate_json(line))
        except ValueError as exc:
            raise ReviewExportError(f"{path}:{n}: not a review export line: {str(exc)[:300]}") from exc
    return records


def review_image(record: ReviewExportV1, image_root: Path | None = None) -> np.ndarray | None:
    """The post's image as RGB: the original file when it is under image_root, else the thumbnail."""
    if image_root is not None and record.image_ref.startswith("file:"):
        path = Path(record.image_ref[len("file:") :])
        try:
            if path.resolve(strict=True).is_relative_to(image_root.resolve(strict=True)):
                with Image.open(path) as im:
                    return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        except OSError:
            pass
    if record.thumbnail_b64:
        try:
            with Image.open(io.BytesIO(base64.b64decode(record.thumbnail_b64, validate=True))) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError):
            return None
    return None


def _features(backbone: ImageBackbone, images: list[np.ndarray], batch: int = 16):
    fmaps, pooled, flipped = [], [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            fmap, pool = backbone(backbone.preprocess(chunk))
            _, pool_flip = backbone(backbone.preprocess([np.ascontiguousarray(i[:, ::-1]) for i in chunk]))
            fmaps.append(fmap.float())
            pooled.append(pool.float())
            flipped.append(pool_flip.float())
    return torch.cat(fmaps), torch.cat(pooled), torch.cat(flipped)


def _polarity_accuracy(
    heads: MoodHeads, text: torch.Tensor | None, fmaps: torch.Tensor, y: torch.Tensor
) -> float | None:
    keep = y >= 0
    if not bool(keep.any()):
        return None
    with torch.inference_mode():
        logits = heads.mira(text[keep] if text is not None else None, fmaps[keep])
    return float((logits.argmax(-1) == y[keep]).float().mean())


def finetune_on_reviews(
    heads: MoodHeads, backbone: ImageBackbone, db: SentenceDatabase, records: list[ReviewExportV1],
    cfg: ReviewTuneConfig = ReviewTuneConfig(), image_root: Path | None = None,
) -> tuple[MoodHeads, dict[str, Any]]:  # fmt: skip
    """A fine-tuned copy of `heads` and a report for the model card (the input heads are not changed)."""
    images, used = [], []
    for record in records:
        rgb = review_image(record, image_root)
        if rgb is not None:
            images.append(rgb)
            used.append(record)
    if not used:
        raise ReviewExportError("no review has a usable image (thumbnail, or a file: path under --image-root)")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tuned = copy.deepcopy(heads).eval()
    fmaps, pooled, flipped = _features(backbone, images)
    k = tuned.config.retrieval_k
    text = torch.as_tensor(retrieve(tuned, db, pooled.numpy(), k).features) if tuned.mira.mode != "image_only" else None
    index = polarity_index(tuned)
    y = torch.tensor([index.get(r.label.polarity, -1) for r in used])
    emotion_rows = [i for i, r in enumerate(used) if r.label.dominant_emotion in MIKELS_EMOTIONS]
    targets = torch.stack([wheel_prior(used[i].label.dominant_emotion, cfg.sigma) for i in emotion_rows]) \
        if emotion_rows else torch.zeros(0, len(MIKELS_EMOTIONS))  # fmt: skip

    order = rng.permutation(len(used))
    holdout = order[: len(used) // 5] if len(used) >= cfg.min_holdout else np.array([], int)
    train_idx = np.setdiff1d(np.arange(len(used)), holdout)
    held = torch.as_tensor(holdout, dtype=torch.long)
    before = _polarity_accuracy(tuned, text[held] if text is not None else None, fmaps[held], y[held]) \
        if len(holdout) else None  # fmt: skip

    fit_cfg = TrainConfig(seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay, lam=cfg.lam)
    mira_idx = np.array([i for i in train_idx if y[i] >= 0], int)
    losses: dict[str, list[float]] = {"mira": [], "distribution": []}

    def mira_loss(batch: np.ndarray) -> torch.Tensor:
        idx = torch.as_tensor(mira_idx[batch])
        flip = torch.as_tensor(rng.random(len(idx)) < 0.5).view(-1, 1, 1, 1)
        fm = torch.where(flip, fmaps[idx].flip(-1), fmaps[idx])
        logits = tuned.mira(text[idx] if text is not None else None, fm)
        return nn.functional.cross_entropy(logits, y[idx], label_smoothing=0.1)

    if len(mira_idx):
        losses["mira"] = _fit(tuned.mira, len(mira_idx), cfg.epochs, cfg.batch_size, fit_cfg, rng, mira_loss)
    held_set = set(holdout.tolist())
    emo_train = np.array([j for j, i in enumerate(emotion_rows) if i not in held_set], int)
    rows = torch.as_tensor(emotion_rows, dtype=torch.long)

    def distribution_loss(batch: np.ndarray) -> torch.Tensor:
        j = torch.as_tensor(emo_train[batch])
        flip = torch.as_tensor(rng.random(len(j)) < 0.5).view(-1, 1)
        x = torch.where(flip, flipped[rows[j]], pooled[rows[j]])
        return multitask_loss(tuned.distribution(x), targets[j], lam=cfg.lam)

    if len(emo_train):
        losses["distribution"] = _fit(tuned.distribution, len(emo_train), cfg.epochs, cfg.batch_size, fit_cfg, rng,
                                      distribution_loss)  # fmt: skip
    tuned.eval()
    after = _polarity_accuracy(tuned, text[held] if text is not None else None, fmaps[held], y[held]) \
        if len(holdout) else None  # fmt: skip
    report = {
        "records": len(records),
        "used": len(used),
        "without_image": len(records) - len(used),
        "polarity_labels": dict(Counter(r.label.polarity for r in used)),
        "emotion_labels": dict(Counter(r.label.dominant_emotion for r in used)),
        "overturned": sum(r.action == "overturn" for r in used),
        "reviewers": len({r.reviewer for r in used}),
        "reviewed_between": [
            min(r.reviewed_at for r in used).isoformat(),
            max(r.reviewed_at for r in used).isoformat(),
        ],  # fmt: skip
        "held_out": len(holdout),
        "held_out_polarity_accuracy_before": before,
        "held_out_polarity_accuracy_after": after,
        "final_losses": {name: (values[-1] if values else None) for name, values in losses.items()},
        "config": asdict(cfg),
    }
    return tuned, report


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
