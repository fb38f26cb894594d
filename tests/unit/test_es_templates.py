"""Index templates generated from the contracts, and contract round-trips (hypothesis)."""

from __future__ import annotations

import base64
import json
import string
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas.emotions import MIKELS_EMOTIONS
from schemas.es_templates import alerts_template, results_template
from schemas.posts import ImageRef, InvalidPost, PostV1, UnknownSchemaVersion, parse_post
from schemas.results import (
    AlertV1,
    AnalysisResultV1,
    AnalysisResultV2,
    EmotionDistribution,
    Evidence,
    ModelVersions,
    PolarityProbs,
    Region,
    StageTimings,
)

# ---- mappings ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results_mapping() -> dict[str, Any]:
    return results_template("moodwatch-results")["template"]["mappings"]


def _leaf_types(props: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in props.items():
        path = f"{prefix}{name}"
        out[path] = spec["type"]
        if "properties" in spec:
            out.update(_leaf_types(spec["properties"], path + "."))
    return out


def test_results_template_shape():
    body = results_template("moodwatch-results")
    assert body["index_patterns"] == ["moodwatch-results*"]
    assert body["template"]["settings"] == {"number_of_shards": 1, "number_of_replicas": 0}
    assert body["_meta"]["managed_by"] == "moodwatch"
    json.dumps(body)  # plain JSON, ready for put_index_template


def test_results_mapping_types(results_mapping):
    assert results_mapping["dynamic"] == "strict"
    props = results_mapping["properties"]
    types = _leaf_types(props)
    # nested arrays of objects, each strict
    for name in ("regions", "evidence"):
        assert props[name]["type"] == "nested" and props[name]["dynamic"] == "strict"
    for name in ("polarity_probs", "emotions", "model_versions", "timings"):
        assert props[name]["type"] == "object" and props[name]["dynamic"] == "strict"
    # dates
    assert types["created_at"] == types["analyzed_at"] == "date"
    # probabilities and scores
    for path in ["negative_score", "polarity_probs.positive", "polarity_probs.negative", "regions.score",
                 "regions.objectness", "regions.senti", "evidence.similarity", "timings.total_seconds",
                 *(f"emotions.{e}" for e in MIKELS_EMOTIONS)]:  # fmt: skip
        assert types[path] == "float", path
    # ids and enums: exact-match keywords
    for path in ["post_id", "author_id", "channel", "polarity", "dominant_emotion", "lang", "image_ref",
                 "regions.polarity", "regions.dominant_emotion", "evidence.emotion", "evidence.source",
                 "model_versions.backend", "model_versions.analyzer"]:  # fmt: skip
        assert types[path] == "keyword", path
        assert _spec(props, path)["ignore_above"] == 1024
    # free text
    assert types["text"] == types["evidence.text"] == "text"
    # integers
    for path in ["schema_version", "image_width", "image_height", "regions.x0", "regions.y1"]:
        assert types[path] == "long", path


def _spec(props: dict[str, Any], path: str) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    return _spec(props[head]["properties"], rest) if rest else props[head]


def _model_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, info in model.model_fields.items():
        out.add(prefix + name)
        ann = info.annotation
        args = getattr(ann, "__args__", ())
        inner = next((a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if inner is not None:
            out |= _model_paths(inner, f"{prefix}{name}.")
    return out


@pytest.mark.parametrize(
    ("model", "template"), [(AnalysisResultV2, results_template), (AlertV1, alerts_template)], ids=["results", "alerts"]
)
def test_every_contract_field_is_mapped(model, template):
    props = template()["template"]["mappings"]["properties"]
    assert set(_leaf_types(props)) == _model_paths(model)


def test_v1_results_fit_the_v2_mapping_with_the_same_types():
    """Stored v1 records stay valid in a results index mapped from v2 (dynamic: strict)."""
    types = _leaf_types(results_template()["template"]["mappings"]["properties"])
    assert _model_paths(AnalysisResultV1) < set(types)
    assert types["polarity_probs.neutral"] == types["emotion6.joy"] == types["text_influence.shift"] == "float"
    assert types["polarity"] == types["dominant_emotion6"] == types["text_influence.status"] == "keyword"


def test_alerts_mapping_types():
    types = _leaf_types(alerts_template("moodwatch-alerts")["template"]["mappings"]["properties"])
    assert types["window_start"] == types["window_end"] == types["created_at"] == "date"
    assert types["alert_id"] == types["channel"] == types["kind"] == "keyword"
    assert types["message"] == "text"
    assert types["observed_negative_share"] == types["p_value"] == types["effect_size"] == "float"
    assert types["posts_in_window"] == "long"


# ---- strategies --------------------------------------------------------------------------------

IDENT = st.text(alphabet=string.ascii_letters + string.digits + "._:@-", min_size=1, max_size=40)
TZ = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
AWARE = st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2200, 1, 1), timezones=TZ)
PROB = st.floats(min_value=0.0, max_value=1.0)
FINITE = st.floats(allow_nan=False, allow_infinity=False)  # NaN/inf are not JSON (see report)
SECONDS = st.floats(min_value=0.0, max_value=1e6)
EMOTION = st.sampled_from(MIKELS_EMOTIONS)
POLARITY = st.sampled_from(["positive", "negative"])
TEXT = st.text(max_size=200)

IMAGE = st.one_of(
    st.builds(ImageRef, url=st.text(min_size=1, max_size=100)),
    st.builds(ImageRef, b64=st.binary(min_size=1, max_size=64).map(lambda b: base64.b64encode(b).decode())),
    st.builds(ImageRef, path=st.text(min_size=1, max_size=100)),
)

POSTS = st.builds(
    PostV1,
    schema_version=st.just(1),
    post_id=IDENT,
    author_id=IDENT,
    channel=IDENT,
    created_at=AWARE,
    image=IMAGE,
    text=st.none() | TEXT,
    lang=st.none() | st.text(min_size=2, max_size=16),
)


@st.composite
def regions(draw) -> Region:
    x0, y0 = draw(st.integers(0, 5000)), draw(st.integers(0, 5000))
    return Region(
        x0=x0,
        y0=y0,
        x1=x0 + draw(st.integers(1, 5000)),
        y1=y0 + draw(st.integers(1, 5000)),
        score=draw(PROB),
        objectness=draw(PROB),
        senti=draw(PROB),
        dominant_emotion=draw(EMOTION),
        polarity=draw(POLARITY),
    )


EVIDENCE = st.builds(Evidence, text=TEXT, emotion=EMOTION, similarity=FINITE, source=TEXT)

RESULTS = st.builds(
    AnalysisResultV1,
    schema_version=st.just(1),
    post_id=IDENT,
    author_id=IDENT,
    channel=IDENT,
    created_at=AWARE,
    analyzed_at=AWARE,
    lang=st.none() | TEXT,
    text=st.none() | TEXT,
    image_ref=TEXT,
    image_width=st.integers(1, 100_000),
    image_height=st.integers(1, 100_000),
    polarity=POLARITY,
    polarity_probs=st.builds(PolarityProbs, positive=PROB, negative=PROB),
    negative_score=PROB,
    emotions=st.lists(PROB, min_size=8, max_size=8).map(EmotionDistribution.from_sequence),
    dominant_emotion=EMOTION,
    regions=st.lists(regions(), max_size=8),
    evidence=st.lists(EVIDENCE, max_size=5),
    model_versions=st.builds(
        ModelVersions,
        analyzer=TEXT,
        backend=st.sampled_from(["local", "triton"]),
        image_encoder=TEXT,
        text_encoder=TEXT,
        heads=TEXT,
        index=TEXT,
    ),  # fmt: skip
    timings=st.builds(
        StageTimings, fetch_seconds=SECONDS, decode_seconds=SECONDS, analyze_seconds=SECONDS, total_seconds=SECONDS
    ),  # fmt: skip
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- round-trips -------------------------------------------------------------------------------


@FAST
@given(POSTS)
def test_post_json_round_trip(post: PostV1):
    raw = post.model_dump_json()
    assert PostV1.model_validate_json(raw) == post
    assert parse_post(raw.encode()) == post


@FAST
@given(RESULTS)
def test_result_json_round_trip(result: AnalysisResultV1):
    assert AnalysisResultV1.model_validate_json(result.model_dump_json()) == result
    # what the sink sends (mode="json") reads back the same way
    assert AnalysisResultV1.model_validate(json.loads(json.dumps(result.model_dump(mode="json")))) == result


@FAST
@given(POSTS, st.sets(st.sampled_from(["url", "b64", "path"])).filter(lambda s: len(s) != 1))
def test_post_needs_exactly_one_image_source(post: PostV1, sources: set[str]):
    data = json.loads(post.model_dump_json())
    data["image"] = {"url": "https://example.invalid/x.png", "b64": "aGVsbG8=", "path": "x.png"}
    data["image"] = {k: v for k, v in data["image"].items() if k in sources}
    with pytest.raises(InvalidPost, match="exactly one of url, b64, path"):
        parse_post(json.dumps(data))
    with pytest.raises(ValidationError):
        ImageRef(**data["image"])


# Not "unknown": 1, and (a lenience of parse_post, see report) True and 1.0, which compare equal to 1.
OTHER_VERSIONS = st.one_of(
    st.integers().filter(lambda v: v != 1),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != 1),
    st.text(max_size=5),
    st.none(),
    st.just(False),
    st.lists(st.integers(), max_size=2),
)


@FAST
@given(POSTS, OTHER_VERSIONS)
def test_unknown_schema_version_rejected(post: PostV1, version: Any):
    data = json.loads(post.model_dump_json())
    data["schema_version"] = version
    with pytest.raises(UnknownSchemaVersion):
        parse_post(json.dumps(data))
    del data["schema_version"]
    with pytest.raises(UnknownSchemaVersion):
        parse_post(json.dumps(data))
