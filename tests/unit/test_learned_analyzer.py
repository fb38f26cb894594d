"""The LocalAnalyzer's learned-proposal path on tiny random models: regions in source pixels, batch-independent."""

import numpy as np
import pytest
import torch

from models.encoders import tiny_image_backbone
from models.proposals import LearnedProposer
from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.regions import proposer_version
from tests.support.tiny import tiny_database, tiny_heads


def _analyzer(chunk: int = 0, top_k: int = 8) -> LocalAnalyzer:
    torch.manual_seed(1)
    backbone = tiny_image_backbone(0, feature_dim=64)
    proposer = LearnedProposer(64, backbone.spatial_size, keep=20)
    options = AnalyzerOptions(proposals="learned", backbone_chunk=chunk, regions_top_k=top_k)
    return LocalAnalyzer(backbone, tiny_heads(0), tiny_database(0), options, proposer=proposer)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((480, 640), (1080, 720), (300, 300))]


def test_regions_lie_inside_the_image_in_source_pixels_and_are_ranked():
    analyzer = _analyzer()
    for image, result in zip(_images(), analyzer.analyze(_images())):
        h, w = image.shape[:2]
        assert (result.image_width, result.image_height) == (w, h)
        assert 0 < len(result.regions) <= 8
        for r in result.regions:
            assert 0 <= r.x0 < r.x1 <= w and 0 <= r.y0 < r.y1 <= h
            assert (r.x1 - r.x0) * (r.y1 - r.y0) >= 800 * 0.9  # the paper's area filter (rounding outward only)
        scores = [r.score for r in result.regions]
        assert scores == sorted(scores, reverse=True)


def test_results_do_not_depend_on_the_batch_or_the_chunking():
    images = _images()
    together = _analyzer(chunk=0).analyze(images)
    chunked = _analyzer(chunk=2).analyze(images)
    alone = [_analyzer().analyze([im])[0] for im in images]
    for a, b, c in zip(together, chunked, alone):
        assert [(r.x0, r.y0, r.x1, r.y1) for r in a.regions] == [(r.x0, r.y0, r.x1, r.y1) for r in c.regions]
        assert a.polarity_probs.positive == pytest.approx(c.polarity_probs.positive, abs=1e-5)
        assert a.polarity_probs.positive == pytest.approx(b.polarity_probs.positive, abs=1e-5)


def test_versions_record_the_proposal_method():
    analyzer = _analyzer()
    assert analyzer.versions.region_proposals == proposer_version(analyzer.proposer)
    assert analyzer.versions.region_proposals.startswith("learned@")
    off = _analyzer(top_k=0)
    assert off.versions.region_proposals is None


@pytest.mark.parametrize(
    "channels, grid",
    [(128, None), (64, (9, 9))],  # other channels; same channels on another grid (EfficientNet-Lite2's 9x9)
    ids=["channels", "grid"],
)
def test_a_proposer_for_another_feature_map_is_refused(channels, grid):
    backbone = tiny_image_backbone(0, feature_dim=64)
    proposer = LearnedProposer(channels, grid or backbone.spatial_size)
    with pytest.raises(ValueError, match=r"feature map; .* \(set MOODWATCH_REGION_PROPOSALS=selective_search\)"):
        LocalAnalyzer(
            backbone, tiny_heads(0), tiny_database(0), AnalyzerOptions(proposals="learned"), proposer=proposer
        )
