"""Fine-tuning the heads on an export of moderators' labels (tiny models with the real architectures)."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest
import torch

from models.encoders import tiny_image_backbone
from pipelines.review_finetune import ReviewExportError, ReviewTuneConfig, finetune_on_reviews, load_export
from pipelines.thumbnails import make_thumbnail
from schemas.reviews import HumanLabel, ModelVerdict, ReviewExportV1
from tests.factories import T0
from tests.support.tiny import tiny_database, tiny_heads


def record(i: int, polarity: str, emotion: str, *, thumbnail: bool = True) -> ReviewExportV1:
    rng = np.random.default_rng(i)
    base = (230, 210, 60) if polarity == "positive" else (40, 20, 90)
    rgb = np.clip(rng.normal(base, 25, size=(96, 128, 3)), 0, 255).astype(np.uint8)
    thumb = make_thumbnail(rgb)
    model = "negative" if polarity == "positive" else "positive"  # every label overturns the model
    return ReviewExportV1(
        post_id=f"p{i}", channel="sport", created_at=T0, image_ref="inline",
        thumbnail_format="webp" if thumbnail else None, thumbnail_b64=thumb.data if thumbnail else None,
        label=HumanLabel(polarity=polarity, dominant_emotion=emotion),
        model=ModelVerdict(polarity=model, negative_score=0.5,
                           dominant_emotion="awe" if model == "positive" else "fear"),
        review_id=f"r{i}", reviewer=f"rob{i % 3}", reviewed_at=T0 + timedelta(minutes=i), action="overturn",
    )  # fmt: skip


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    records = [record(i, "positive" if i % 2 else "negative", "contentment" if i % 2 else "sadness") for i in range(40)]
    records.append(record(99, "neutral", "surprise"))  # trains neither head, but is counted
    records.append(record(98, "negative", "anger", thumbnail=False))  # no image anywhere: skipped
    path = tmp_path_factory.mktemp("reviews") / "reviews.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in records))
    return path


def test_finetuning_learns_the_reviewers_labels_and_reports_it(export):
    torch.manual_seed(0)
    base = tiny_heads(3)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    records = load_export(export)
    tuned, report = finetune_on_reviews(base, tiny_image_backbone(0), tiny_database(), records,
                                        ReviewTuneConfig(epochs=25, lr=3e-3))  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items()), "the input heads are untouched"
    assert (report["records"], report["used"], report["without_image"], report["held_out"]) == (42, 41, 1, 8)
    assert report["polarity_labels"] == {"negative": 20, "positive": 20, "neutral": 1}
    assert report["reviewers"] == 3 and report["overturned"] == 41
    assert report["held_out_polarity_accuracy_after"] >= 0.875
    assert report["held_out_polarity_accuracy_after"] > report["held_out_polarity_accuracy_before"]
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("mira.") for k in changed) and any(k.startswith("distribution.") for k in changed)
    assert not any(k.startswith(("aligner.", "region_scorer.")) for k in changed)
    json.dumps(report)  # goes into the model card as it is


def test_an_export_with_a_bad_line_names_it(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(record(1, "positive", "awe").model_dump_json() + "\n" + '{"post_id": "x"}\n')
    with pytest.raises(ReviewExportError, match="bad.jsonl:2"):
        load_export(path)


def test_no_usable_image_is_an_error():
    with pytest.raises(ReviewExportError, match="no review has a usable image"):
        finetune_on_reviews(tiny_heads(), tiny_image_backbone(0), tiny_database(),
                            [record(1, "positive", "awe", thumbnail=False)])  # fmt: skip
