"""Distribution and polarity metrics (models/metrics.py) on hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from models.metrics import distribution_metrics, polarity_metrics, roc_auc


def test_distribution_metrics_half_half_vs_one_hot():
    # pred p = [0.5, 0.5], target t = [1, 0]
    m = distribution_metrics([0.5, 0.5], [1.0, 0.0])
    assert m["chebyshev"] == pytest.approx(0.5)  # max(|-0.5|, |0.5|)
    # clark: sqrt(0.25 / 2.25 + 0.25 / 0.25) = sqrt(1/9 + 1)
    assert m["clark"] == pytest.approx(math.sqrt(10 / 9))
    assert m["canberra"] == pytest.approx(0.5 / 1.5 + 0.5 / 0.5)  # 4/3
    assert m["kl"] == pytest.approx(math.log(2), rel=1e-8)  # 1 * log(1 / 0.5); the 0 term is 0
    assert m["cosine"] == pytest.approx(0.5 / math.sqrt(0.5))  # = 1/sqrt(2)
    assert m["intersection"] == pytest.approx(0.5)


def test_kl_uses_eps_when_prediction_is_zero():
    # target [0.5, 0.5], pred [1, 0]: 0.5 log(0.5 / 1) + 0.5 log((0.5 + 1e-10) / 1e-10)
    m = distribution_metrics([1.0, 0.0], [0.5, 0.5])
    expected = 0.5 * math.log(0.5 / (1 + 1e-10)) + 0.5 * math.log((0.5 + 1e-10) / 1e-10)
    assert m["kl"] == pytest.approx(expected, rel=1e-9)
    assert m["kl"] == pytest.approx(10.8198, abs=1e-3)  # -0.3466 + 0.5 * 22.3327


def test_zero_over_zero_terms_count_as_zero():
    p = [0.2, 0.8, 0.0]
    m = distribution_metrics(p, p)
    assert m["chebyshev"] == 0.0
    assert m["clark"] == 0.0
    assert m["canberra"] == 0.0
    assert m["kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["cosine"] == pytest.approx(1.0)
    assert m["intersection"] == pytest.approx(1.0)


def test_three_class_case_and_batch_mean():
    p = [0.2, 0.3, 0.5]
    t = [0.1, 0.6, 0.3]
    m = distribution_metrics(p, t)
    assert m["chebyshev"] == pytest.approx(0.3)
    assert m["clark"] == pytest.approx(math.sqrt((0.1 / 0.3) ** 2 + (0.3 / 0.9) ** 2 + (0.2 / 0.8) ** 2))
    assert m["canberra"] == pytest.approx(0.1 / 0.3 + 0.3 / 0.9 + 0.2 / 0.8)
    kl = 0.1 * math.log(0.1 / 0.2) + 0.6 * math.log(0.6 / 0.3) + 0.3 * math.log(0.3 / 0.5)
    assert m["kl"] == pytest.approx(kl, rel=1e-7)
    assert m["cosine"] == pytest.approx(0.35 / math.sqrt(0.38 * 0.46))
    assert m["intersection"] == pytest.approx(0.1 + 0.3 + 0.3)
    # batch of the two cases: means
    batch = distribution_metrics(torch.tensor([p, t]), np.array([t, t]))
    assert batch["chebyshev"] == pytest.approx(0.15)
    assert batch["intersection"] == pytest.approx((0.7 + 1.0) / 2)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        distribution_metrics([0.5, 0.5], [1.0, 0.0, 0.0])


def test_polarity_metrics_hand_computed():
    y = [1, 1, 0, 0, 1]
    prob = [0.9, 0.4, 0.3, 0.6, 0.8]
    m = polarity_metrics(y, prob)
    # predictions 1,0,0,1,1 -> 3/5 correct
    assert m["accuracy"] == pytest.approx(0.6)
    # positive: tp=2 fp=1 fn=1 -> F1 2/3; negative: tp=1 fp=1 fn=1 -> 1/2
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # pairs (pos, neg): 0.9>0.3, 0.9>0.6, 0.4>0.3, 0.4<0.6, 0.8>0.3, 0.8>0.6 -> 5/6
    assert m["auc"] == pytest.approx(5 / 6)


def test_auc_with_ties_matches_pairwise_definition():
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0, 0], [0.7, 0.2, 0.7, 0.1]) == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200) + 0.3 * y, 1)  # rounding makes many ties
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(y, s) == pytest.approx(pairwise, abs=1e-12)


def test_macro_f1_when_a_class_is_never_predicted():
    # all predicted positive: positive F1 = 2*2/(2*2+2) = 2/3, negative F1 undefined -> 0
    m = polarity_metrics([1, 1, 0, 0], [0.9, 0.8, 0.7, 0.6])
    assert m["macro_f1"] == pytest.approx(1 / 3)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["auc"] == pytest.approx(1.0)
