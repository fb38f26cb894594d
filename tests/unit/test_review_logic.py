"""Reviews as data, without a store: the ReviewV1 contract, passwords and user lists, the queue's
priority, precision from reviews, and channel thresholds applied to the detector's config."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from pydantic import ValidationError

from schemas.reviews import ChannelThresholdsV1, ReviewV1, emotion_fits_polarity
from tests.factories import T0, make_result
from workers.aggregator.detection import DetectorConfig
from workers.dashboard.auth import LoginLimiter, UsersError, hash_password, parse_users, verify_password
from workers.dashboard.precision import channel_precision
from workers.dashboard.review_queue import priority, uncertainty


def review(post_id="p1", channel="sport", action="confirm", model=("negative", "sadness"), human=None, **kw):
    if human is None and action == "confirm":
        human = model
    fields = dict(
        review_id=uuid.uuid4().hex, post_id=post_id, channel=channel, post_created_at=T0,
        reviewed_at=T0 + timedelta(hours=1), reviewer="rob", reviewer_role="reviewer", auth_method="session",
        action=action, model_polarity=model[0], model_negative_score=0.8 if model[0] == "negative" else 0.2,
        model_dominant_emotion=model[1], human_polarity=(human or (None, None))[0],
        human_dominant_emotion=(human or (None, None))[1], image_ref="inline",
    )  # fmt: skip
    return ReviewV1(**{**fields, **kw}).model_dump(mode="json")


# -- the contract ----------------------------------------------------------------------------------
def test_a_review_label_must_fit_its_action():
    review(action="confirm")
    review(action="overturn", human=("positive", "awe"))
    review(action="overturn", human=("neutral", "sadness"))  # neutral takes any emotion
    review(action="escalate", note="legal should look")
    with pytest.raises(ValidationError, match="confirm keeps"):
        review(action="confirm", human=("positive", "awe"))
    with pytest.raises(ValidationError, match="must change"):
        review(action="overturn", human=("negative", "sadness"))
    with pytest.raises(ValidationError, match="not a positive emotion"):
        review(action="overturn", human=("positive", "anger"))
    with pytest.raises(ValidationError, match="escalate carries no label"):
        review(action="escalate", human=("positive", "awe"))
    with pytest.raises(ValidationError):
        review(reviewer="rob\nX-Injected: 1")  # no control characters in an author name


def test_emotion_labels_of_both_vocabularies_fit_their_polarity():
    assert emotion_fits_polarity("anger", "negative") and not emotion_fits_polarity("anger", "positive")
    assert emotion_fits_polarity("joy", "positive") and not emotion_fits_polarity("joy", "negative")
    assert emotion_fits_polarity("surprise", "negative") and emotion_fits_polarity("surprise", "positive")
    review(action="overturn", model=("negative", "fear"), human=("positive", "joy"))
    with pytest.raises(ValidationError):
        review(action="overturn", human=("positive", "<script>"))


def test_a_channel_with_markup_is_refused_by_the_contracts():
    with pytest.raises(ValidationError):
        make_result("p1", channel="<script>alert(1)</script>")
    with pytest.raises(ValidationError):
        review(channel="<b>sport</b>")


def test_thresholds_overrides_only_what_is_set_and_fit_the_detector():
    change = ChannelThresholdsV1(change_id="c1", channel="sport", changed_at=T0, changed_by="ada",
                                 spike_min_count=5, spike_min_effect=0.4)  # fmt: skip
    assert change.overrides() == {"min_count": 5, "min_effect": 0.4}
    cfg = replace(DetectorConfig(), **change.overrides())
    assert (cfg.min_count, cfg.min_effect, cfg.alpha_arm) == (5, 0.4, DetectorConfig().alpha_arm)
    with pytest.raises(ValidationError):
        ChannelThresholdsV1(change_id="c2", channel="sport", changed_at=T0, changed_by="ada", spike_alpha_arm=0.5)


# -- passwords and users ---------------------------------------------------------------------------
def test_password_hashes_verify_and_differ_per_salt():
    a, b = hash_password("correct horse", n=2**10), hash_password("correct horse", n=2**10)
    assert a != b and a.startswith("scrypt$1024$") and ":" not in a
    assert verify_password("correct horse", a) and verify_password("correct horse", b)
    assert not verify_password("correct hors", a) and not verify_password("", a)
    assert not verify_password("x", "bcrypt$whatever") and not verify_password("x", "scrypt$broken")


def test_user_list_is_parsed_strictly():
    h = hash_password("pw", n=2**10)
    users = parse_users(f"ann:viewer:{h}\nbob:reviewer:{h}, cy:admin:{h}")
    assert {name: role for name, (role, _) in users.items()} == {"ann": "viewer", "bob": "reviewer", "cy": "admin"}
    for bad in (f"ann:root:{h}", "ann:viewer:plaintext", f"ann:viewer:{h},ann:admin:{h}", "ann"):
        with pytest.raises(UsersError):
            parse_users(bad)


def test_login_limiter_blocks_after_failures_per_name():
    limiter = LoginLimiter(max_failures=3, window_s=60)
    for _ in range(3):
        assert not limiter.blocked("ann")
        limiter.failed("ann")
    assert limiter.blocked("ann") and not limiter.blocked("bob")
    limiter.succeeded("ann")
    assert not limiter.blocked("ann")


# -- the queue's order -----------------------------------------------------------------------------
def test_priority_prefers_negative_unsure_posts_in_alerts():
    sure_negative = {"negative_score": 0.95, "polarity_probs": {"positive": 0.05, "negative": 0.95}}
    unsure = {"negative_score": 0.55, "polarity_probs": {"positive": 0.45, "negative": 0.55}}
    positive = {"negative_score": 0.05, "polarity_probs": {"positive": 0.95, "negative": 0.05}}
    assert uncertainty(unsure["polarity_probs"]) == pytest.approx(0.9)
    assert uncertainty({"positive": 0.2, "neutral": 0.5, "negative": 0.3}) == pytest.approx(0.8)
    score = {name: priority(doc, in_alert=False)[0] for name, doc in
             (("sure", sure_negative), ("unsure", unsure), ("positive", positive))}  # fmt: skip
    assert score["unsure"] > score["sure"] > score["positive"]
    assert priority(sure_negative, in_alert=True)[0] == pytest.approx(score["sure"] + 0.2)
    assert priority(unsure, in_alert=True)[1] == ["negative 55%", "model unsure", "in an alert"]


# -- precision -------------------------------------------------------------------------------------
def newest_first(*reviews):
    return sorted(reviews, key=lambda r: r["reviewed_at"], reverse=True)


def test_model_precision_counts_the_latest_label_of_each_flagged_post():
    later = {"reviewed_at": (T0 + timedelta(hours=2)).isoformat()}
    rows = channel_precision(newest_first(
        review("p1"), review("p2"),
        review("p3", action="overturn", human=("positive", "awe")),
        {**review("p3"), **later},  # p3 reviewed again: confirmed after all
        review("p4", action="overturn", model=("positive", "awe"), human=("negative", "anger")),  # a miss, not a flag
        review("p5", action="escalate"),
        review("n1", channel="news", action="overturn", human=("neutral", "sadness")),
    ))  # fmt: skip
    sport, news = rows[1], rows[0]
    assert (sport["flagged_confirmed"], sport["flagged_reviewed"], sport["model_precision"]) == (3, 3, 1.0)
    counts = (sport["reviews"], sport["reviewed_posts"], sport["labelled_posts"], sport["escalated_posts"])
    assert counts == (6, 5, 4, 1)
    assert (news["model_precision"], news["alert_precision"]) == (0.0, None)


def test_alert_precision_is_the_share_of_judged_alerts_the_reviews_support():
    a1, a2, a3 = "sport:negative_spike:1000", "sport:negative_spike:2000", "sport:emotion_shift:3000"
    alerts = {a3: {"alert_id": a3, "channel": "sport", "dominant_emotion": "fear"}}
    rows = channel_precision(newest_first(
        review("p1", alert_ids=[a1]), review("p2", alert_ids=[a1]),
        review("p3", alert_ids=[a1], action="overturn", human=("positive", "awe")),  # a1: 2 of 3 -> confirmed
        review("p4", alert_ids=[a2], action="overturn", human=("positive", "awe")),  # a2: 0 of 1 -> refuted
        review("p5", alert_ids=[a3], action="overturn", model=("negative", "sadness"), human=("negative", "fear")),
        review("p6", alert_ids=[a3], action="escalate"),  # no label: no vote
    ), alerts)  # fmt: skip
    (sport,) = rows
    assert (sport["alerts_confirmed"], sport["alerts_judged"]) == (2, 3)
    assert sport["alert_precision"] == pytest.approx(2 / 3)
