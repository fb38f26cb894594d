"""`moodwatch train --reviews FILE.jsonl`: fine-tune the current heads on the moderators' labels."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console

from workers.common.settings import AnalysisSettings

console = Console(stderr=True)


def train_on_reviews(
    reviews: Path, *, out: Path, index: Path | None, seed: int, epochs: int, image_root: Path | None
) -> Path:
    """Load MOODWATCH_HEADS_PATH, fine-tune it on the export, write the checkpoint and its model card."""
    from models.encoders import load_image_backbone, load_text_encoder
    from pipelines.checkpoints import load_heads, save_heads
    from pipelines.retrieval import SentenceDatabase, default_index_dir, ensure_seed_index
    from pipelines.review_finetune import ReviewTuneConfig, file_digest, finetune_on_reviews, load_export
    from pipelines.review_finetune import __doc__ as how

    settings = AnalysisSettings()
    started = time.monotonic()
    records = load_export(reviews)
    heads, base_card = load_heads(settings.heads_path)
    backbone = load_image_backbone(settings.image_encoder, "cpu")
    text_encoder = load_text_encoder(settings.text_encoder, "cpu")
    db = SentenceDatabase.load(index) if index else ensure_seed_index(
        default_index_dir(settings.artifacts_dir), text_encoder)  # fmt: skip
    console.print(f"fine-tuning {settings.heads_path} (version {base_card.get('version')}) on {len(records)} "
                  f"reviewed posts from {reviews}")  # fmt: skip
    tuned, report = finetune_on_reviews(heads, backbone, db, records, ReviewTuneConfig(seed=seed, epochs=epochs),
                                        image_root)  # fmt: skip
    card = {k: v for k, v in base_card.items() if k != "version"}
    card.update(
        created_at=datetime.now(UTC).isoformat(), base_heads=base_card.get("version"),
        supervision={**base_card.get("supervision", {}), "human reviews": " ".join(how.split("\n\n")[1].split())},
        fine_tuned_on_reviews={"file": str(reviews), "sha256": file_digest(reviews), **report},
    )  # fmt: skip
    path = save_heads(tuned, out, card)
    before, after = report["held_out_polarity_accuracy_before"], report["held_out_polarity_accuracy_after"]
    if before is not None:
        console.print(f"held-out polarity accuracy on {report['held_out']} reviewed posts: {before:.3f} -> {after:.3f}")
    console.print(f"wrote {path} and {path.parent / 'MODEL_CARD.md'} in {time.monotonic() - started:.0f}s")
    return path
