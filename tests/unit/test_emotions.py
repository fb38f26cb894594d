"""Emotion wheel, prior layer, multi-task loss, polarity (models/emotions.py)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.emotions import (
    MIKELS_EMOTIONS,
    POLARITY_SIGN,
    POSITIVE_MASK,
    PriorLayer,
    emotion_index,
    multitask_loss,
    polarity_from_emotions,
    wheel_distance,
    wheel_distance_matrix,
    wheel_prior,
    wheel_prior_matrix,
)

indices = st.integers(min_value=0, max_value=7)


def test_wheel_order_and_polarity_masks():
    assert MIKELS_EMOTIONS == ("anger", "disgust", "sadness", "fear", "excitement", "awe", "contentment", "amusement")
    assert POSITIVE_MASK.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert POLARITY_SIGN.tolist() == [-1, -1, -1, -1, 1, 1, 1, 1]


def test_emotion_index():
    assert emotion_index("fear") == 3
    assert emotion_index("Amusement") == 7
    assert emotion_index(5) == 5
    for bad in ("joy", 8, -1, 2.5):
        with pytest.raises(ValueError):
            emotion_index(bad)


def test_wheel_distance_known_values():
    assert wheel_distance("anger", "amusement") == 1  # circular neighbours
    assert wheel_distance("anger", "excitement") == 4  # opposite
    assert wheel_distance("fear", "awe") == 2
    assert wheel_distance(0, 5) == 3


@settings(deadline=None)
@given(indices, indices, indices)
def test_wheel_distance_is_a_circular_metric(i, j, k):
    assert wheel_distance(i, j) == wheel_distance(j, i)
    assert (wheel_distance(i, j) == 0) == (i == j)
    assert 0 <= wheel_distance(i, j) <= 4
    assert wheel_distance(i, k) <= wheel_distance(i, j) + wheel_distance(j, k)
    # rotating both ends around the wheel keeps the distance
    assert wheel_distance((i + 3) % 8, (j + 3) % 8) == wheel_distance(i, j)


def test_wheel_distance_matrix():
    d = wheel_distance_matrix()
    assert d.shape == (8, 8)
    assert torch.equal(d, d.T)
    assert d[0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]


def test_fear_prior_matches_the_paper():
    p = wheel_prior("fear").double()
    expected = {
        "fear": 0.664,
        "sadness": 0.166,
        "excitement": 0.166,
        "disgust": 2.57e-3,
        "awe": 2.57e-3,
        "anger": 2.47e-6,
        "contentment": 2.47e-6,
        "amusement": 1.48e-10,
    }
    for name, value in expected.items():
        got = float(p[MIKELS_EMOTIONS.index(name)])
        if value > 0.1:
            assert got == pytest.approx(value, abs=1e-3), name
        else:
            assert got == pytest.approx(value, rel=1e-2), name
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)


def test_prior_matrix_rows_are_rotations_and_sigma_matters():
    v = wheel_prior_matrix(0.6, dtype=torch.float64)
    assert torch.allclose(v.sum(1), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(v[5], torch.roll(v[3], 2))
    assert torch.allclose(v, v.T)
    wide = wheel_prior_matrix(1.0, dtype=torch.float64)
    assert wide[3, 3] < v[3, 3]
    with pytest.raises(ValueError):
        wheel_prior_matrix(0.0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=16, max_size=16))
def test_prior_layer_output_is_a_distribution(values):
    f = torch.tensor(values, dtype=torch.float64).reshape(2, 8).softmax(-1)
    p = PriorLayer()(f)
    assert p.shape == (2, 8)
    assert torch.all(p >= 0)
    assert torch.allclose(p.sum(-1), torch.ones(2, dtype=torch.float64), atol=1e-6)


def test_prior_layer_is_sum_of_weighted_priors():
    f = torch.zeros(1, 8)
    f[0, 3] = 0.75  # fear
    f[0, 7] = 0.25  # amusement
    expected = 0.75 * wheel_prior("fear") + 0.25 * wheel_prior("amusement")
    assert torch.allclose(PriorLayer()(f)[0], expected, atol=1e-7)


def _random_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(3, 8, generator=g, dtype=torch.float64).softmax(-1)
    target = torch.randn(3, 8, generator=g, dtype=torch.float64).mul(2).softmax(-1)
    return pred, target


def test_loss_lambda_extremes_are_pure_ce_and_pure_kl():
    pred, target = _random_case()
    labels = target.argmax(-1)
    ce = -torch.log(pred[torch.arange(3), labels]).mean()
    kl = (target * (target.log() - pred.log())).sum(-1).mean()
    assert float(multitask_loss(pred, target, lam=0.0)) == pytest.approx(float(ce), rel=1e-8)
    assert float(multitask_loss(pred, target, lam=1.0)) == pytest.approx(float(kl), rel=1e-8)
    mixed = 0.3 * ce + 0.7 * kl
    assert float(multitask_loss(pred, target)) == pytest.approx(float(mixed), rel=1e-8)


def test_loss_uses_explicit_labels_and_logits():
    pred, target = _random_case(1)
    labels = torch.tensor([0, 1, 2])
    ce = -torch.log(pred[torch.arange(3), labels]).mean()
    assert float(multitask_loss(pred, target, labels=labels, lam=0.0)) == pytest.approx(float(ce), rel=1e-8)
    logits = torch.randn(3, 8, dtype=torch.float64)
    a = multitask_loss(logits, target, inputs_are_logits=True)
    b = multitask_loss(logits.softmax(-1), target)
    assert float(a) == pytest.approx(float(b), rel=1e-6)


def test_loss_kl_term_ignores_zero_target_entries_and_is_zero_at_target():
    target = torch.tensor([[0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(multitask_loss(target.clone(), target, lam=1.0)) == pytest.approx(0.0, abs=1e-9)
    pred = torch.full((1, 8), 1 / 8, dtype=torch.float64)
    assert float(multitask_loss(pred, target, lam=1.0)) == pytest.approx(math.log(4), rel=1e-8)


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_loss_gradients_match_finite_differences(lam):
    target = _random_case(2)[1][:2]
    logits = torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    prior = PriorLayer()
    assert torch.autograd.gradcheck(
        lambda z: multitask_loss(prior(z.softmax(-1)), target, lam=lam), (logits,), eps=1e-6, atol=1e-5
    )


def test_loss_rejects_bad_inputs():
    pred, target = _random_case()
    with pytest.raises(ValueError):
        multitask_loss(pred, target, lam=1.5)
    with pytest.raises(ValueError):
        multitask_loss(pred[:, :4], target)


def test_polarity_from_emotions():
    dist = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1], [0.0] * 7 + [1.0]])
    pol = polarity_from_emotions(dist)
    assert torch.allclose(pol, torch.tensor([[0.6, 0.4], [1.0, 0.0]]))
    assert polarity_from_emotions(dist[0]).shape == (2,)
