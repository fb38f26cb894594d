"""Three-way polarity with the post's text (models/fusion, models/moodnet), the Emotion6 head and its
measurement helpers (models/emotion6, models/distribution, pipelines/polarity, pipelines/emotion6)."""

import numpy as np
import pytest
import torch

from models.distribution import DistributionEnsemble
from models.emotion6 import MIKELS_TO_EMOTION6, emotion6_distance_matrix, emotion6_prior_matrix
from models.fusion import MiraHead
from models.moodnet import NEGATIVE, NEUTRAL, POSITIVE, HeadsConfig, MoodHeads, calibrate_emotions, fuse_regions_sum
from pipelines.emotion6 import mikels_as_emotion6, top1_accuracy
from pipelines.polarity import polarity_loss, positive_share

B, K, T, C, H, W, D = 3, 2, 12, 20, 3, 4, 16


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, T, generator=g), torch.randn(B, C, H, W, generator=g), torch.randn(B, T, generator=g)


def _head(mode="full", pooling="slots"):
    torch.manual_seed(0)
    return MiraHead(T, C, D, num_classes=3, mode=mode, post_text=True, pooling=pooling).eval()


@pytest.mark.parametrize("pooling", ["mean", "slots"])
def test_a_post_without_text_is_the_image_only_case(pooling):
    text, fmap, post = _inputs()
    head = _head(pooling=pooling)
    none = torch.zeros(B, dtype=torch.bool)
    without = head(text, fmap)
    assert torch.allclose(head(text, fmap, post_text=post, post_mask=none), without, atol=1e-6)
    assert torch.allclose(head(text, fmap, post_text=post * 100, post_mask=none), without, atol=1e-6)


def test_the_post_text_moves_only_the_posts_that_have_it():
    text, fmap, post = _inputs()
    head = _head()
    mask = torch.tensor([True, False, True])
    with_text = head(text, fmap, post_text=post, post_mask=mask)
    without = head(text, fmap)
    assert not torch.allclose(with_text[0], without[0]) and not torch.allclose(with_text[2], without[2])
    assert torch.allclose(with_text[1], without[1], atol=1e-6)


def test_attention_has_a_row_for_the_post_query_zeroed_when_masked():
    text, fmap, post = _inputs()
    _, attn = _head()(text, fmap, return_attention=True, post_text=post, post_mask=torch.tensor([True, False, True]))
    assert attn.shape == (B, K + 1, H * W)
    assert torch.allclose(attn[[0, 2], K].sum(-1), torch.ones(2)) and attn[1, K].abs().sum() == 0


def test_text_only_mode_ignores_the_image_and_needs_text():
    text, fmap, post = _inputs()
    head = _head(mode="text_only")
    assert torch.allclose(head(None, fmap, post_text=post), head(None, fmap * 5 + 1, post_text=post))
    with pytest.raises(ValueError, match="post_text"):
        head(None, fmap)
    with pytest.raises(ValueError, match="post_text=True"):
        MiraHead(T, C, D, mode="text_only")


def test_fusion_without_retrieved_sentences_still_reads_the_image():
    _, fmap, post = _inputs()
    head = _head()
    empty = torch.zeros(B, 0, T)
    logits = head(empty, fmap, post_text=post, post_mask=torch.zeros(B, dtype=torch.bool))
    assert not torch.allclose(logits[0], logits[1])  # image slot differs per image


def test_region_fusion_moves_only_the_polar_mass():
    g = torch.tensor([0.5, 0.3, 0.2])
    fused = fuse_regions_sum(g, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), beta=0.3)
    assert fused.sum() == pytest.approx(1.0) and fused[NEUTRAL] == pytest.approx(0.3)
    assert fused[POSITIVE] == pytest.approx(0.35) and fused[NEGATIVE] == pytest.approx(0.35)
    assert torch.equal(fuse_regions_sum(g, torch.zeros(0, 2), beta=0.3), g)


def test_calibrated_emotions_follow_the_positive_negative_split_of_three_way_probabilities():
    emotions = torch.full((8,), 1 / 8)
    out = calibrate_emotions(emotions, torch.tensor([0.3, 0.6, 0.1]))
    assert out[4:].sum() == pytest.approx(0.75) and out[:4].sum() == pytest.approx(0.25)


def test_binary_labels_do_not_train_the_neutral_logit():
    logits = torch.zeros(2, 3, requires_grad=True)
    loss = polarity_loss(logits, torch.tensor([POSITIVE, NEGATIVE]), torch.tensor([True, True]))
    loss.backward()
    assert logits.grad[:, NEUTRAL].abs().sum() == 0 and logits.grad[:, POSITIVE].abs().sum() > 0
    three = torch.zeros(1, 3, requires_grad=True)
    polarity_loss(three, torch.tensor([NEUTRAL]), torch.tensor([False])).backward()
    assert three.grad[0, NEUTRAL] < 0


def test_positive_share_drops_neutral():
    share = positive_share(torch.tensor([[0.3, 0.6, 0.1], [0.2, 0.0, 0.8]]))
    assert torch.allclose(share, torch.tensor([0.75, 0.2]))


def test_heads_have_three_way_polarity_and_an_emotion6_ensemble():
    heads = MoodHeads(HeadsConfig(image_dim=C, text_dim=T, hidden_dim=D, emotion6_members=3, emotion6_hidden=8)).eval()
    text, fmap, post = _inputs()
    probs, _ = heads.polarity(text, fmap, post, torch.ones(B, dtype=torch.bool))
    assert probs.shape == (B, 3) and torch.allclose(probs.sum(-1), torch.ones(B))
    e6 = heads.emotions6(fmap.mean((2, 3)))
    assert e6.shape == (B, 7) and torch.allclose(e6.sum(-1), torch.ones(B), atol=1e-6)
    assert len(heads.emotion6.members) == 3
    with pytest.raises(ValueError, match="post_mask"):
        heads.polarity(text, fmap, post)


def test_legacy_checkpoint_configs_keep_their_two_way_heads():
    cfg = HeadsConfig.from_dict({"image_dim": C, "text_dim": T, "hidden_dim": D})
    assert (cfg.num_polarities, cfg.post_text, cfg.emotion6) == (2, False, False)
    assert MoodHeads(cfg).emotion6 is None


def test_ensemble_is_the_mean_of_its_members():
    torch.manual_seed(0)
    ens = DistributionEnsemble(3, in_dim=C, hidden_dim=8, num_labels=7, use_prior=False).eval()
    x = torch.randn(4, C)
    assert torch.allclose(ens(x), torch.stack([m(x) for m in ens.members]).mean(0))


def test_emotion6_prior_and_the_mikels_mapping():
    d = emotion6_distance_matrix(neutral_distance=2.0)
    assert torch.equal(d, d.T) and d[2, 5] == 1 and d[3, 4] == 4  # fear-surprise adjacent, joy-sadness opposite
    prior = emotion6_prior_matrix(0.6)
    assert torch.allclose(prior.sum(1), torch.ones(7)) and prior.argmax(1).tolist() == list(range(7))
    assert torch.equal(MIKELS_TO_EMOTION6.sum(1), torch.ones(8))
    mapped = mikels_as_emotion6(np.eye(8))
    assert mapped[:, 6].sum() == 0  # Mikels has no neutral: the reason for a head of its own
    assert mapped[7].argmax() == 3  # amusement -> joy


def test_top1_accuracy_counts_any_tied_maximum():
    target = np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])
    assert top1_accuracy(np.array([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05]]), target) == 0.5


def test_review_labels_map_onto_the_heads_own_polarity_classes():
    from pipelines.review_finetune import polarity_index

    three = MoodHeads(HeadsConfig(image_dim=C, text_dim=T, hidden_dim=D, emotion6=False))
    two = MoodHeads(HeadsConfig.from_dict({"image_dim": C, "text_dim": T, "hidden_dim": D}))
    assert polarity_index(three) == {"positive": POSITIVE, "neutral": NEUTRAL, "negative": NEGATIVE}
    assert polarity_index(two) == {"positive": 0, "negative": 1}
