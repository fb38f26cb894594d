"""MVSA-Single and Emotion6 readers on the real shared data (../shared/data, or $MOODWATCH_DATA_DIR)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pipelines.datasets import DatasetNotFound, load_emotion6, load_mvsa
from schemas.emotions import EMOTION6_LABELS

pytestmark = pytest.mark.data

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("MOODWATCH_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")


def _needs(folder: str) -> None:
    if not (DATA_DIR / folder).is_dir():
        pytest.skip(f"{folder}/ not found under {DATA_DIR} (set MOODWATCH_DATA_DIR to the folder holding it)")


def test_mvsa_single_has_clmlf_split_and_three_labels():
    _needs("mvsa-single-dev")
    posts = load_mvsa(DATA_DIR)
    assert Counter(p.split for p in posts) == {"train": 3611, "dev": 450}
    assert {p.label_name for p in posts} == {"positive", "neutral", "negative"}
    assert all(p.path.is_file() for p in posts[:50]) and len({p.id for p in posts}) == len(posts)
    assert len(load_mvsa(DATA_DIR, split="dev")) == 450


def test_emotion6_distributions_sum_to_one_with_231_images_per_folder():
    _needs("emotion6-dev")
    items = load_emotion6(DATA_DIR)
    assert Counter(i.folder for i in items) == {f: 231 for f in EMOTION6_LABELS if f != "neutral"}
    assert all(abs(sum(i.distribution) - 1) < 1e-6 and len(i.distribution) == 7 for i in items)
    assert all(i.path.is_file() for i in items[:50])


def test_missing_folders_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DatasetNotFound, match="MVSA-Single data not found"):
        load_mvsa(tmp_path)
    with pytest.raises(DatasetNotFound, match="Emotion6 data not found"):
        load_emotion6(tmp_path)
