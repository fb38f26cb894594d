"""Training and the evaluation protocol on a tiny synthetic, learnable problem (no data needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.evaluate import ROWS, cross_validate, summarise
from pipelines.features import FeatureCache
from pipelines.polarity import positive_share
from pipelines.train import TrainConfig, emotion_targets, mira_probs, train_heads
from tests.support.tiny import TINY_HEADS, tiny_database


def synthetic_cache(n: int = 60, seed: int = 0) -> FeatureCache:
    """Positive images have a bright first channel: a signal every head can learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    fmaps = rng.normal(size=(n, 64, 7, 7)).astype(np.float32)
    fmaps[:, 0] += np.where(labels == 1, 3.0, -3.0)[:, None, None]
    pooled = fmaps.mean(axis=(2, 3))
    region_feats = rng.normal(size=(n, 50, 64)).astype(np.float32)
    region_feats[:, :, 0] += np.where(labels == 1, 3.0, -3.0)[:, None]
    return FeatureCache(
        names=[f"img{i}" for i in range(n)],
        labels=labels,
        feat_maps=fmaps.astype(np.float16),
        pooled=pooled,
        pooled_flip=pooled.copy(),
        region_feats=region_feats.astype(np.float16),
        region_objectness=rng.random((n, 50)).astype(np.float32),
        region_mask=rng.random((n, 50)) < 0.6,
        caption_emb=rng.normal(size=(n, 32)).astype(np.float32),
    )


CFG = TrainConfig(epochs=12, align_epochs=5, lr=2e-3, batch_size=8, heads=TINY_HEADS)


def test_training_learns_the_polarity_signal_and_losses_fall():
    cache = synthetic_cache()
    heads, history = train_heads(cache, tiny_database(), CFG)
    assert set(history) == {"aligner", "mira", "distribution", "regions"}
    assert np.mean(history["mira"][-3:]) < np.mean(history["mira"][:3])
    accuracy = ((positive_share(mira_probs(heads, tiny_database(), cache)) > 0.5).numpy() == (cache.labels == 1)).mean()
    assert accuracy > 0.9


def test_emotion_targets_stay_on_the_labelled_polarity():
    cache = synthetic_cache()
    heads, _ = train_heads(cache, tiny_database(), CFG)
    targets = emotion_targets(heads, tiny_database(), cache, CFG)
    positive = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    np.testing.assert_allclose(targets.sum(1), 1.0, atol=1e-5)
    assert np.all(targets[cache.labels == 1][:, ~positive] == 0)
    assert np.all(targets[cache.labels == 0][:, positive] == 0)


def test_cross_validation_reports_every_row():
    torch.manual_seed(0)
    table = summarise(cross_validate(synthetic_cache(40), tiny_database(), CFG, folds=2))
    assert set(ROWS) <= set(table)
    assert table["MIRA: full (k=3)"]["accuracy"] > 0.8
    assert set(table["aligner (held-out image->caption)"]) == {"recall@1", "recall@5", "recall@10"}


@pytest.mark.parametrize("mode", ["image_only", "concat"])
def test_ablations_retrain_only_the_mira_head(mode):
    from pipelines.train import with_mode

    cache = synthetic_cache()
    full, _ = train_heads(cache, tiny_database(), CFG)
    ablation, history = train_heads(cache, tiny_database(), with_mode(CFG, mode), base=full)
    assert set(history) == {"mira"} and ablation.mira.mode == mode
    for name in ("aligner", "distribution", "region_scorer"):
        for key, value in getattr(full, name).state_dict().items():
            assert torch.equal(value, getattr(ablation, name).state_dict()[key])
