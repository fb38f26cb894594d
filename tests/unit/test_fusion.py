"""MIRA cross-attention head (models/fusion.py): shapes, masking, attention, ablations."""

import math

import pytest
import torch

from models.fusion import MiraHead, flatten_feature_map, masked_mean

B, K, T, C, H, W, D = 2, 3, 12, 20, 3, 4, 16


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, K, T, generator=g), torch.randn(B, C, H, W, generator=g)


def _head(mode="full", **kw):
    torch.manual_seed(0)
    return MiraHead(text_dim=T, image_dim=C, hidden_dim=D, num_classes=2, dropout=0.1, mode=mode, **kw).eval()


def test_full_shapes_and_attention_rows_sum_to_one():
    text, fmap = _inputs()
    logits, attn = _head()(text, fmap, return_attention=True)
    assert logits.shape == (B, 2)
    assert attn.shape == (B, K, H * W)
    assert torch.allclose(attn.sum(-1), torch.ones(B, K), atol=1e-6)


def test_attention_is_scaled_dot_product_of_projected_query_and_key():
    text, fmap = _inputs()
    head = _head()
    _, attn = head(text, fmap, return_attention=True)
    q = head.query(head.text_norm(text))
    k = head.key(head.image_norm(fmap.flatten(2).transpose(1, 2)))
    expected = (q @ k.transpose(1, 2) / math.sqrt(D)).softmax(-1)
    assert torch.allclose(attn, expected, atol=1e-6)


def test_feature_map_layouts_are_equivalent():
    text, fmap = _inputs()
    head = _head()
    flat = fmap.flatten(2).transpose(1, 2)  # [B, HW, C]
    assert torch.allclose(head(text, fmap), head(text, flat), atol=1e-6)
    with pytest.raises(ValueError):
        head(text, torch.randn(B, C + 1, H, W))


def test_masked_sentence_has_no_influence():
    text, fmap = _inputs()
    head = _head()
    mask = torch.tensor([[True, True, False], [True, False, False]])
    before, attn = head(text, fmap, text_mask=mask, return_attention=True)
    changed = text.clone()
    changed[0, 2] = 100.0 * torch.randn(T)
    changed[1, 1:] = -50.0
    after = head(changed, fmap, text_mask=mask)
    assert torch.allclose(before, after, atol=1e-6)
    assert torch.all(attn[0, 2] == 0) and torch.all(attn[1, 1:] == 0)
    # without the mask the same change does move the output (the test can fail)
    assert not torch.allclose(head(text, fmap), head(changed, fmap), atol=1e-4)


def test_masking_equals_dropping_the_padded_sentences():
    text, fmap = _inputs()
    head = _head()
    mask = torch.tensor([[True, True, False], [True, True, False]])
    assert torch.allclose(head(text, fmap, text_mask=mask), head(text[:, :2], fmap), atol=1e-6)


def test_single_sentence_is_full_mode_with_k_equal_1():
    text, fmap = _inputs()
    logits, attn = _head()(text[:, :1], fmap, return_attention=True)
    assert logits.shape == (B, 2) and attn.shape == (B, 1, H * W)


def test_image_only_ignores_text():
    text, fmap = _inputs()
    head = _head("image_only")
    logits, attn = head(text, fmap, return_attention=True)
    assert attn is None
    assert torch.allclose(logits, head(None, fmap))
    assert torch.allclose(logits, head(text * 7 + 1, fmap))


def test_concat_uses_text_and_image():
    text, fmap = _inputs()
    head = _head("concat")
    assert head.feature_dim == 2 * D
    out = head(text, fmap)
    assert out.shape == (B, 2)
    other_text, other_map = _inputs(seed=1)  # (a shift would not do: LayerNorm removes it)
    assert not torch.allclose(out, head(other_text, fmap))
    assert not torch.allclose(out, head(text, other_map))


def test_unknown_mode_and_bad_text_shape():
    with pytest.raises(ValueError):
        MiraHead(mode="late")
    text, fmap = _inputs()
    with pytest.raises(ValueError):
        _head()(text[..., :5], fmap)


def test_gradients_reach_all_parameters_in_full_mode():
    text, fmap = _inputs()
    head = _head().train()
    head(text, fmap).sum().backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []


def test_helpers():
    x = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.allclose(masked_mean(x, torch.tensor([[True, False, True]])), (x[0, 0] + x[0, 2]) / 2)
    assert torch.all(masked_mean(x, torch.tensor([[False, False, False]])) == 0)
    fmap = torch.randn(1, 5, 2, 3)
    flat = flatten_feature_map(fmap, 5)
    assert flat.shape == (1, 6, 5) and torch.equal(flat[0, 4], fmap[0, :, 1, 1])
