"""Corpus loaders on the real shared data (../shared/data, or $MOODWATCH_DATA_DIR)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pipelines.retrieval import check_corpus_files, dedupe_sentences, load_goemotions, load_isear, load_seed_sentences
from schemas.emotions import MIKELS_EMOTIONS

pytestmark = pytest.mark.data

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("MOODWATCH_DATA_DIR") or PROJECT_ROOT.parent / "shared" / "data")

if not (DATA_DIR / "text").is_dir():
    pytest.skip(
        f"shared data not found at {DATA_DIR} (set MOODWATCH_DATA_DIR to the folder holding text/)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def goemotions():
    return load_goemotions(DATA_DIR)


@pytest.fixture(scope="module")
def isear():
    return load_isear(DATA_DIR)


def test_corpus_files_present():
    check_corpus_files(["seed", "goemotions", "isear"], DATA_DIR)


def test_goemotions_maps_to_every_mikels_emotion(goemotions):
    counts = Counter(s.emotion for s in goemotions)
    assert set(counts) == set(MIKELS_EMOTIONS)
    assert min(counts.values()) >= 300, counts
    assert all(s.source == "goemotions" and len(s.text.split()) >= 3 for s in goemotions)


def test_isear_maps_its_five_emotions_and_is_clean(isear):
    counts = Counter(s.emotion for s in isear)
    assert set(counts) == {"anger", "disgust", "fear", "sadness", "excitement"}
    assert min(counts.values()) >= 900, counts
    assert not any("á" in s.text or "\\" in s.text for s in isear)
    assert not any(s.text.lower().startswith(("no response", "[")) for s in isear)


def test_all_corpora_together_cover_every_emotion(goemotions, isear):
    merged = dedupe_sentences(load_seed_sentences() + goemotions + isear)
    counts = Counter(s.emotion for s in merged)
    assert set(counts) == set(MIKELS_EMOTIONS)
    assert len(merged) > 15_000
    keys = [" ".join("".join(c if c.isalnum() else " " for c in s.text.casefold()).split()) for s in merged]
    assert len(keys) == len(set(keys))
