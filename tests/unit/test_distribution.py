"""EW-MTCNN distribution head (models/distribution.py)."""

import pytest
import torch

from models.distribution import DistributionHead
from models.emotions import multitask_loss, wheel_prior_matrix


def _head(**kw):
    torch.manual_seed(0)
    return DistributionHead(in_dim=10, hidden_dim=16, **kw).eval()


def test_output_is_prior_smoothed_softmax():
    head = _head()
    x = torch.randn(4, 10)
    p, f = head(x, return_f=True)
    assert p.shape == f.shape == (4, 8)
    assert torch.allclose(f.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(p.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(p, f @ wheel_prior_matrix(0.6), atol=1e-6)
    assert torch.equal(head(x), p)


def test_without_prior_p_equals_f():
    p, f = _head(use_prior=False)(torch.randn(3, 10), return_f=True)
    assert torch.equal(p, f)


def test_feature_map_input_is_mean_pooled():
    head = _head()
    fmap = torch.randn(2, 10, 3, 3)
    assert torch.allclose(head(fmap), head(fmap.mean(dim=(2, 3))))


def test_extra_feature_is_concatenated_and_checked():
    head = _head(extra_dim=6)
    x, extra = torch.randn(2, 10), torch.randn(2, 6)
    assert head(x, extra).shape == (2, 8)
    assert not torch.allclose(head(x, extra), head(x, extra + 1.0))
    with pytest.raises(ValueError):
        head(x)
    with pytest.raises(ValueError):
        _head()(x, extra)
    with pytest.raises(ValueError):
        _head()(torch.randn(2, 9))


def test_head_trains_towards_a_target_distribution():
    torch.manual_seed(0)
    head = DistributionHead(in_dim=10, hidden_dim=16, dropout=0.0)
    x = torch.randn(8, 10)
    target = wheel_prior_matrix(0.6)[torch.arange(8)]  # one prior per sample
    first = float(multitask_loss(head(x), target).detach())
    for _ in range(25):  # plain gradient descent (building torch.optim costs ~2 s of imports)
        head.zero_grad()
        loss = multitask_loss(head(x), target)
        loss.backward()
        with torch.no_grad():
            for param in head.parameters():
                param -= 1.0 * param.grad
    assert float(loss.detach()) < 0.5 * first
