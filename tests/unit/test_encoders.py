"""Encoders with tiny random weights: shapes, normalisation, stride, loading, aligned head + loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.encoders import (
    AlignedImageEncoder,
    EncoderNotFoundError,
    ImageBackbone,
    TextEncoder,
    contrastive_loss,
    load_image_backbone,
    load_text_encoder,
    tiny_image_backbone,
    tiny_text_encoder,
)


@pytest.fixture(scope="module")
def backbone() -> ImageBackbone:
    return tiny_image_backbone(0)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return tiny_text_encoder(0)


def _img(h: int, w: int, c: int | None = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# -- image backbone ---------------------------------------------------------------------------


def test_tiny_backbone_interface(backbone):
    assert backbone.input_size == (224, 224)
    assert backbone.spatial_size == (7, 7)
    assert backbone.stride == 32
    assert backbone.feature_dim == 64
    assert backbone.name.startswith("tiny-random")


def test_preprocess_shapes_and_modes(backbone):
    images = [_img(300, 400), _img(50, 60, None), _img(224, 224, 4), _img(17, 901, 1)]
    x = backbone.preprocess(images)
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32
    fmap, pooled = backbone(x)
    assert fmap.shape == (4, 64, 7, 7)
    assert pooled.shape == (4, 64)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    assert backbone.preprocess([]).shape == (0, 3, 224, 224)


def test_preprocess_normalisation(backbone):
    grey = np.full((100, 80, 3), 127, dtype=np.uint8)
    white = np.full((224, 224, 3), 255, dtype=np.uint8)
    x = backbone.preprocess([grey, white])
    assert torch.allclose(x[0], torch.zeros_like(x[0]), atol=1e-4)  # (127 - 127) / 128
    assert torch.allclose(x[1], torch.full_like(x[1], 128 / 128), atol=1e-4)  # (255 - 127) / 128


def test_preprocess_rejects_bad_input(backbone):
    with pytest.raises(TypeError):
        backbone.preprocess([np.zeros((10, 10, 3), dtype=np.float32)])
    with pytest.raises(ValueError):
        backbone.preprocess([np.zeros((10, 10, 5), dtype=np.uint8)])


def test_stride_maps_boxes_to_feature_map(backbone):
    # the full image maps onto the full 7x7 map, whatever the original size
    full = backbone.to_feature_coords(np.array([[0, 0, 640, 480]]), width=640, height=480)
    torch.testing.assert_close(full, torch.tensor([[0.0, 0.0, 7.0, 7.0]]))
    half = backbone.to_feature_coords(torch.tensor([[320.0, 0.0, 640.0, 240.0]]), width=640, height=480)
    torch.testing.assert_close(half, torch.tensor([[3.5, 0.0, 7.0, 3.5]]))
    # the same box in preprocessed-input pixels divided by the stride
    assert 224 / backbone.stride == backbone.spatial_size[0]


def test_tiny_backbone_seeded(backbone):
    x = backbone.preprocess([_img(64, 64)])
    same = tiny_image_backbone(0)
    other = tiny_image_backbone(1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x)[1], same(x)[1])
        assert not torch.allclose(backbone(x)[1], other(x)[1])
    assert load_image_backbone("tiny-random:1").name == other.name


def test_hf_local_resnet_and_clip_folders(tmp_path, monkeypatch):
    """The Hugging Face branch, with tiny checkpoints saved to local folders (no hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import CLIPVisionConfig, CLIPVisionModel, ResNetConfig, ResNetModel

    torch.manual_seed(0)
    res_dir = tmp_path / "resnet"
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])).save_pretrained(
        res_dir
    )
    res = load_image_backbone(str(res_dir))
    fmap, pooled = res(res.preprocess([_img(100, 120)]))
    assert fmap.shape == (1, 32, 7, 7) and pooled.shape == (1, 32) and res.stride == 32

    clip_dir = tmp_path / "clip"
    cfg = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(cfg).save_pretrained(clip_dir)
    clip = load_image_backbone(str(clip_dir))
    fmap, pooled = clip(clip.preprocess([_img(40, 50)]))
    assert clip.input_size == (32, 32)
    assert fmap.shape == (1, 16, 4, 4) and pooled.shape == (1, 16) and clip.stride == 8


def test_missing_encoders_raise_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderNotFoundError, match="no-such-org/no-such-model"):
        load_image_backbone("no-such-org/no-such-model", local_files_only=True)
    with pytest.raises(EncoderNotFoundError, match="not found"):
        load_text_encoder(str(tmp_path / "nothing-here"), local_files_only=True)
    with pytest.raises(ValueError):
        load_text_encoder("tiny-random:x")


# -- text encoder -----------------------------------------------------------------------------


def test_tiny_text_encoder_shapes_and_norms(text_encoder):
    texts = ["a happy dog", "A tax form!", "an elderly man sitting alone on a park bench in the rain", "ünïcode ☃"]
    emb = text_encoder.encode(texts, batch_size=2)
    assert emb.shape == (4, text_encoder.dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert text_encoder.encode([]).shape == (0, text_encoder.dim)
    assert text_encoder.encode("one text").shape == (1, text_encoder.dim)
    t = text_encoder.encode(texts, convert_to_numpy=False)
    assert isinstance(t, torch.Tensor) and t.shape == (4, text_encoder.dim)


def test_batching_and_length_sorting_keep_order(text_encoder):
    texts = ["short", "a much longer sentence with many more words in it", "mid length text", "x y z"]
    together = text_encoder.encode(texts, batch_size=3)
    one_by_one = np.concatenate([text_encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_tiny_text_encoder_seeded(text_encoder):
    e0 = text_encoder.encode(["same words"])
    np.testing.assert_allclose(e0, tiny_text_encoder(0).encode(["same words"]), atol=1e-6)
    assert not np.allclose(e0, tiny_text_encoder(1).encode(["same words"]))
    assert load_text_encoder("tiny-random:0").name == text_encoder.name


def test_hf_local_text_folder(tmp_path, monkeypatch, text_encoder):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "bert"
    text_encoder.model.save_pretrained(folder)
    text_encoder.tokenizer.save_pretrained(folder)
    loaded = load_text_encoder(str(folder))
    assert loaded.dim == text_encoder.dim
    np.testing.assert_allclose(loaded.encode(["a joyful puppy"]), text_encoder.encode(["a joyful puppy"]), atol=1e-5)


# -- aligned encoder and CLIP loss ------------------------------------------------------------


def test_aligned_encoder_outputs_unit_vectors():
    head = AlignedImageEncoder(in_dim=64, out_dim=32, hidden_dim=48).eval()
    out = head(torch.randn(5, 64))
    assert out.shape == (5, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(5))
    assert math.isclose(float(head.temperature.detach()), 0.07, rel_tol=1e-5)
    assert head.log_inv_temperature.requires_grad
    assert not AlignedImageEncoder(in_dim=4, out_dim=4, learnable_temperature=False).log_inv_temperature.requires_grad


def test_aligned_encoder_on_backbone(backbone):
    head = AlignedImageEncoder(in_dim=backbone.feature_dim, out_dim=32, hidden_dim=16).eval()
    out = head.encode_images(backbone, backbone.preprocess([_img(50, 50), _img(90, 30)]))
    assert out.shape == (2, 32)


def test_contrastive_loss_values():
    b, d = 6, 8
    # orthogonal one-hot pairs that match exactly: loss near 0 at a low temperature
    e = torch.eye(d)[:b]
    assert float(contrastive_loss(e, e, 0.01)) < 1e-6
    # all similarities equal: loss is log(B) in both directions
    same = torch.nn.functional.normalize(torch.ones(b, d), dim=1)
    assert math.isclose(float(contrastive_loss(same, same, 0.07)), math.log(b), rel_tol=1e-5)
    # symmetric in its arguments
    x, y = (
        torch.nn.functional.normalize(torch.randn(b, d), dim=1),
        torch.nn.functional.normalize(torch.randn(b, d), dim=1),
    )
    torch.testing.assert_close(contrastive_loss(x, y, 0.1), contrastive_loss(y, x, 0.1))
    # group ids: duplicates of one image are both positives; without groups the same batch is penalised
    dup = torch.cat([e[:3], e[:1]])
    groups = torch.tensor([0, 1, 2, 0])
    assert float(contrastive_loss(dup, dup, 0.01, group_ids=groups)) < 1e-6
    assert float(contrastive_loss(dup, dup, 0.01)) > 0.3  # ungrouped, the duplicate is a negative
    torch.testing.assert_close(contrastive_loss(x, y, 0.1, group_ids=torch.arange(b)), contrastive_loss(x, y, 0.1))
    with pytest.raises(ValueError):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_contrastive_training_decreases_loss_on_toy_problem():
    torch.manual_seed(0)
    n, in_dim, out_dim = 64, 32, 16
    images = torch.randn(n, in_dim)
    mixing = torch.randn(in_dim, out_dim)
    texts = torch.nn.functional.normalize(images @ mixing + 0.1 * torch.randn(n, out_dim), dim=1)
    head = AlignedImageEncoder(in_dim=in_dim, out_dim=out_dim, hidden_dim=64, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    head.train()
    first = float(head.loss(images, texts).detach())
    for _ in range(120):
        opt.zero_grad()
        loss = head.loss(images, texts)
        loss.backward()
        opt.step()
    last = float(head.loss(images, texts).detach())
    assert last < 0.3 * first
    head.eval()
    with torch.no_grad():
        top1 = (head(images) @ texts.T).argmax(dim=1)
    assert (top1 == torch.arange(n)).float().mean() > 0.9


def test_aligned_checkpoint_round_trip(tmp_path):
    head = AlignedImageEncoder(in_dim=12, out_dim=6, hidden_dim=10, name="aligned-test").eval()
    path = tmp_path / "aligned.pt"
    torch.save(head.checkpoint(text_encoder="tiny"), path)
    loaded = AlignedImageEncoder.from_checkpoint(path)
    x = torch.randn(3, 12)
    torch.testing.assert_close(loaded(x), head(x))
    assert loaded.name == head.name and loaded.name.startswith("aligned-test@")
    with pytest.raises(EncoderNotFoundError):
        AlignedImageEncoder.from_checkpoint(tmp_path / "missing.pt")
