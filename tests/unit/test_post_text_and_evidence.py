"""The post's text as model input (pipelines/text), the evidence ranking (pipelines/evidence), result schema v2
and the aggregator's three-way counts."""

import numpy as np
import pytest

from pipelines.evidence import EvidenceRanking, agreement_rates, rank_evidence, verdict_sides
from pipelines.text import PostText, clean_post_text, decide_text_use, latin_share
from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import AnalysisResultV1, AnalysisResultV2, parse_result
from tests.factories import make_result, make_result_v1
from workers.aggregator.detection import Observation, WindowStats


def test_tweets_are_cleaned_of_retweet_prefix_urls_and_handles():
    raw = "RT @someone: So happy for @friend!! #blessed https://t.co/xyz htt"
    assert clean_post_text(raw) == "So happy for !! blessed"
    assert clean_post_text(None) == "" and clean_post_text("   ") == ""


@pytest.mark.parametrize(
    ("post", "expected"),
    [
        (PostText("what a day", "en"), ("what a day", "used")),
        (PostText("what a day", "en-GB"), ("what a day", "used")),
        (PostText("was für ein Tag", "de"), (None, "unsupported_language")),
        (PostText("что за день", None), (None, "not_latin_script")),
        (PostText("what a day", None), ("what a day", "used")),
        (PostText("https://t.co/x", "en"), (None, "no_text")),
        (None, (None, "no_text")),
    ],
)
def test_which_texts_the_model_reads(post, expected):
    use = decide_text_use(post)
    assert (use.text, use.reason) == expected


def test_latin_share():
    assert latin_share("abc") == 1.0 and latin_share("123") == 1.0 and latin_share("ab日本") == 0.5


def test_evidence_ranking_prefers_emotions_the_post_has_and_keeps_similarity_order_within_one():
    emotion = {e: i for i, e in enumerate(MIKELS_EMOTIONS)}
    ids = np.array([emotion["anger"], emotion["awe"], emotion["awe"], emotion["fear"]])
    sims = np.array([0.30, 0.20, 0.25, 0.28])
    dist = np.full(8, 0.01)
    dist[emotion["awe"]] = 0.9
    order = rank_evidence(sims, ids, dist / dist.sum(), EvidenceRanking(shown=3, weight=0.2))
    assert order[:2].tolist() == [2, 1]
    assert rank_evidence(sims, ids, dist, EvidenceRanking(shown=3, weight=0.0)).tolist() == [0, 3, 2]


def test_agreement_rates_use_the_lean_of_a_neutral_verdict():
    pos, neg = MIKELS_EMOTIONS.index("awe"), MIKELS_EMOTIONS.index("anger")
    polarity = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
    assert verdict_sides(polarity).tolist() == [True, False, False]
    shown = np.array([[pos, pos, neg], [pos, neg, neg], [pos, neg, neg]])
    assert agreement_rates(shown, polarity) == {"top1": pytest.approx(1 / 3), "majority": 1.0}


def test_results_of_both_schema_versions_parse():
    v2, v1 = make_result("a", negative=0.1, neutral=0.7), make_result_v1("b", negative=0.8)
    assert v2.polarity == "neutral" and v2.polarity_probs.neutral == 0.7
    assert isinstance(parse_result(v2.model_dump_json()), AnalysisResultV2)
    assert isinstance(parse_result(v1.model_dump_json().encode()), AnalysisResultV1)
    with pytest.raises(ValueError, match="schema_version"):
        parse_result({"schema_version": 3})


def test_windows_count_neutral_posts_in_the_total_of_the_negative_share():
    window = WindowStats(start=0, size=60)
    for i, (neg, neu) in enumerate([(0.8, 0.0), (0.1, 0.7), (0.1, 0.0), (0.1, 0.8)]):
        window.add(Observation.from_result(make_result(f"p{i}", negative=neg, neutral=neu)))
    assert (window.count, window.negative, window.neutral, window.positive) == (4, 1, 2, 1)
    assert window.negative_share == 0.25
    assert WindowStats.from_dict(window.to_dict()).neutral == 2
    old_table = {k: v for k, v in window.to_dict().items() if k != "neutral"}  # written before three-way polarity
    assert WindowStats.from_dict(old_table).neutral == 0


def test_observations_from_before_three_way_polarity_decode_as_not_neutral():
    obs = Observation.from_result(make_result_v1("x", negative=0.1))
    d = obs.to_dict()
    d.pop("u")
    assert Observation.from_dict(d).neutral is False
