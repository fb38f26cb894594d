"""The backbone through ONNX Runtime: same outputs as torch at any batch size, cached per weights, wired by settings."""

import numpy as np
import pytest
import torch

from models.encoders import tiny_image_backbone
from models.proposals import LearnedProposer
from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.onnx_backbone import (
    BackboneRuntimeError,
    OnnxBackbone,
    backbone_digest,
    backbone_onnx_path,
    backbone_runner,
    check_parity,
    ensure_backbone_onnx,
    export_backbone_onnx,
    resolve_backbone_runtime,
)
from tests.support.tiny import tiny_database, tiny_heads

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def backbone():
    return tiny_image_backbone(0, feature_dim=64)


@pytest.fixture(scope="module")
def runner(backbone, tmp_path_factory):
    return OnnxBackbone(ensure_backbone_onnx(backbone, tmp_path_factory.mktemp("onnx")), threads=1)


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnx_runtime_matches_torch_at_any_batch_size(backbone, runner, batch):
    pixels = backbone.preprocess(
        [np.random.default_rng(i).integers(0, 255, (200 + 7 * i, 300, 3), dtype=np.uint8) for i in range(batch)]
    )
    with torch.inference_mode():
        expected = backbone(pixels)
    got = runner(pixels)
    for e, g in zip(expected, got):
        assert g.shape == e.shape and g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_raw_pixel_export_normalises_inside(backbone, tmp_path):
    """Triton's ``backbone`` takes 0..255 pixels: the raw export equals torch on the normalised ones."""
    raw = OnnxBackbone(export_backbone_onnx(backbone, tmp_path / "raw.onnx", raw_pixels=True), threads=1)
    pixels = torch.rand(2, 3, *backbone.input_size) * 255
    normalised = (pixels - backbone.pixel_mean) / backbone.pixel_std
    with torch.inference_mode():
        expected = backbone(normalised)
    for e, g in zip(expected, raw(pixels)):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_the_export_is_cached_per_weights(backbone, tmp_path):
    first = ensure_backbone_onnx(backbone, tmp_path)
    stamp = first.stat().st_mtime_ns
    assert ensure_backbone_onnx(backbone, tmp_path) == first and first.stat().st_mtime_ns == stamp
    other = tiny_image_backbone(1, feature_dim=64)
    assert backbone_digest(other) != backbone_digest(backbone)
    assert ensure_backbone_onnx(other, tmp_path) != first
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically


def test_parity_check_refuses_an_export_of_other_weights(backbone, tmp_path):
    wrong = OnnxBackbone(ensure_backbone_onnx(tiny_image_backbone(1, feature_dim=64), tmp_path), threads=1)
    with pytest.raises(BackboneRuntimeError, match="differs from torch"):
        check_parity(backbone, wrong)


def test_runtime_resolution():
    assert resolve_backbone_runtime("auto", "cpu") == "onnxruntime"
    assert resolve_backbone_runtime("auto", "cuda") == "torch"
    assert resolve_backbone_runtime("torch", "cpu") == "torch"


def test_the_learned_analyzer_gives_the_same_results_on_either_runtime(backbone, runner):
    images = [np.random.default_rng(i).integers(0, 255, (240 + 40 * i, 320, 3), dtype=np.uint8) for i in range(4)]

    def analyzer(backbone_runner=None):
        torch.manual_seed(1)
        proposer = LearnedProposer(64, backbone.spatial_size, keep=20)
        options = AnalyzerOptions(proposals="learned", backbone_chunk=3)
        return LocalAnalyzer(
            backbone, tiny_heads(0), tiny_database(0), options, proposer=proposer, backbone_runner=backbone_runner
        )

    eager, onnx = analyzer().analyze(images), analyzer(runner).analyze(images)
    for a, b in zip(eager, onnx):
        assert b.polarity_probs.positive == pytest.approx(a.polarity_probs.positive, abs=1e-4)
        assert b.emotions.as_list() == pytest.approx(a.emotions.as_list(), abs=1e-4)
        assert len(a.regions) == len(b.regions)
        for ra, rb in zip(a.regions, b.regions):
            assert (rb.x0, rb.y0, rb.x1, rb.y1) == pytest.approx((ra.x0, ra.y0, ra.x1, ra.y1), abs=1.0)


@pytest.mark.parametrize("stale", ["truncated", "other-graph"])
def test_a_bad_cached_export_is_made_again(backbone, tmp_path, stale):
    """A cache entry that cannot be opened, or that holds another graph under the same weights digest (an
    export by an older version of the code), is exported again instead of failing the start."""
    path = backbone_onnx_path(backbone, tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if stale == "truncated":
        path.write_bytes(b"\x08\x07not a whole model")
    else:
        export_backbone_onnx(tiny_image_backbone(1, feature_dim=64), path)
    runner, runtime = backbone_runner(backbone, "onnxruntime", tmp_path)
    assert runtime == "onnxruntime" and runner.path == path
    assert check_parity(backbone, runner) < 1e-3


def test_a_fresh_export_that_differs_is_an_error(backbone, tmp_path, monkeypatch):
    import pipelines.onnx_backbone as onnx_backbone

    other = tiny_image_backbone(1, feature_dim=64)
    monkeypatch.setattr(onnx_backbone, "export_backbone_onnx", lambda _bb, path: export_backbone_onnx(other, path))
    with pytest.raises(BackboneRuntimeError, match="differs from torch"):
        backbone_runner(backbone, "onnxruntime", tmp_path)
