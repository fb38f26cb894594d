"""The learned path as one ONNX graph: the same analysis as torch, cached per weights, refused when it cannot match."""

import numpy as np
import pytest
import torch

from models.encoders import tiny_image_backbone, tiny_text_encoder
from models.proposals import LearnedProposer
from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.onnx_backbone import BackboneRuntimeError
from pipelines.onnx_learned import (
    OUTPUT_NAMES,
    LearnedProgram,
    OnnxLearnedProgram,
    check_program_parity,
    learned_program_runner,
    unsupported_reason,
)
from pipelines.retrieval import SentenceDatabase, load_seed_sentences
from pipelines.text import PostText
from tests.support.tiny import tiny_database, tiny_heads

pytest.importorskip("onnxruntime")

OPTIONS = AnalyzerOptions(proposals="learned", regions_top_k=8)


def _parts(seed: int = 0):
    torch.manual_seed(1)
    backbone = tiny_image_backbone(seed, feature_dim=64)
    return backbone, tiny_heads(seed), LearnedProposer(64, backbone.spatial_size, keep=20), tiny_database(0)


def _program(seed: int = 0, top_k: int = 8) -> LearnedProgram:
    backbone, heads, proposer, database = _parts(seed)
    return LearnedProgram(backbone, heads, proposer, database, OPTIONS.candidates, OPTIONS.retrieval_k, top_k, 0.6)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (1080, 720), (300, 300))]


def test_the_analysis_through_the_graph_equals_the_torch_path(tmp_path):
    backbone, heads, proposer, database = _parts()
    program = LearnedProgram(backbone, heads, proposer, database, OPTIONS.candidates, OPTIONS.retrieval_k, 8, 0.6)
    runner = learned_program_runner(program, tmp_path, threads=1)

    def analyzer(learned_runner=None):
        return LocalAnalyzer(
            backbone,
            heads,
            database,
            OPTIONS,
            proposer=proposer,
            text_encoder=tiny_text_encoder(0),
            learned_runner=learned_runner,
        )

    texts = [None, PostText("a lonely rainy street at night", "en"), PostText("we won the final!", "en")]
    eager, graph = analyzer().analyze(_images(), texts), analyzer(runner).analyze(_images(), texts)
    assert [r.text_influence.status for r in graph] == ["no_text", "used", "used"]
    for a, b in zip(eager, graph):
        assert b.polarity_probs.negative == pytest.approx(a.polarity_probs.negative, abs=1e-4)
        assert b.emotions.as_list() == pytest.approx(a.emotions.as_list(), abs=1e-4)
        assert [e.text for e in b.evidence] == [e.text for e in a.evidence]
        assert b.text_influence.status == a.text_influence.status
        assert b.text_influence.shift == pytest.approx(a.text_influence.shift, abs=1e-4)
        assert len(b.regions) == len(a.regions) > 0
        for ra, rb in zip(a.regions, b.regions):
            assert (rb.x0, rb.y0, rb.x1, rb.y1) == pytest.approx((ra.x0, ra.y0, ra.x1, ra.y1), abs=1.0)
            assert rb.score == pytest.approx(ra.score, abs=1e-4)


@pytest.mark.parametrize("batch", [1, 5])
def test_the_graph_takes_any_batch_and_pads_missing_regions(tmp_path, batch):
    program = _program(top_k=24)  # more slots than the proposer keeps (20): the last ones are masked
    runner = learned_program_runner(program, tmp_path, threads=1)
    inputs = program.example_inputs(batch)
    out = runner(*inputs)
    assert set(out) == set(OUTPUT_NAMES)
    assert out["REGION_BOXES"].shape == (batch, 24, 4) and out["REGION_MASK"].shape == (batch, 24)
    assert not out["REGION_MASK"][:, 20:].any()
    with torch.inference_mode():
        expected = program(*inputs)
    assert torch.allclose(out["POLARITY"], expected[0], atol=1e-5)


def test_the_export_is_cached_per_weights(tmp_path):
    first = learned_program_runner(_program(0), tmp_path, threads=1)
    again = learned_program_runner(_program(0), tmp_path, threads=1)
    other = learned_program_runner(_program(1), tmp_path, threads=1)
    assert again.path == first.path and other.path != first.path
    assert len(list(tmp_path.glob("learned-program-*.onnx"))) == 2


def test_a_graph_of_other_weights_is_refused(tmp_path):
    wrong = OnnxLearnedProgram(learned_program_runner(_program(1), tmp_path, threads=1).path, threads=1)
    with pytest.raises(BackboneRuntimeError, match="differs from torch|other regions"):
        check_program_parity(_program(0), wrong)


def test_an_approximate_index_keeps_the_torch_path():
    hnsw = SentenceDatabase.from_sentences(load_seed_sentences()[:80], tiny_text_encoder(0), index_type="hnsw")
    assert "hnsw" in unsupported_reason(hnsw)
    assert unsupported_reason(tiny_database(0)) is None
    backbone, heads, proposer, _ = _parts()
    with pytest.raises(ValueError, match="approximate"):
        LearnedProgram(backbone, heads, proposer, hnsw, 16, 3, 8, 0.6)


def test_a_stale_cached_graph_is_made_again(tmp_path):
    """The same weights digest with another graph in the file (an older export): rebuilt, not refused."""
    first = learned_program_runner(_program(1), tmp_path, threads=1)
    target = learned_program_runner(_program(0), tmp_path / "other", threads=1).path
    target.write_bytes(first.path.read_bytes())  # program 1's graph under program 0's name
    again = learned_program_runner(_program(0), tmp_path / "other", threads=1)
    assert again.path == target and check_program_parity(_program(0), again) < 1e-3
