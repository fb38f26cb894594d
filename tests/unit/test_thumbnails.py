"""Thumbnails of analysed images: small WebP copies kept in the result for the dashboard, mapped as a
non-indexed field, stored in Elasticsearch but not published on the results topic."""

from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from kafka import TopicPartition
from PIL import Image
from prometheus_client import CollectorRegistry
from skimage import data as samples

from pipelines.thumbnails import make_thumbnail, thumbnail_or_none
from schemas.es_templates import results_template
from schemas.results import ImageAnalysis
from tests.factories import MODEL_VERSIONS, make_result, post_json
from tests.support.fakes import FakeConsumer, FakeProducer, FakeStore, Rec
from workers.adapters.kafka_io import OutageAwareConsumer, OutageAwareProducer
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.settings import AnalyzerSettings
from workers.analyzer.worker import AnalyzerWorker


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field"])
def test_thumbnail_is_small_webp_with_the_images_aspect(name):
    rgb = getattr(samples, name)()
    thumb = make_thumbnail(rgb)
    raw = base64.b64decode(thumb.data, validate=True)
    assert thumb.format == "webp" and raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    assert max(thumb.width, thumb.height) == 256 and len(raw) < 16_000, len(raw)
    h, w = rgb.shape[:2]
    assert abs(thumb.width / thumb.height - w / h) < 0.02
    with Image.open(io.BytesIO(raw)) as im:
        assert im.size == (thumb.width, thumb.height)


def test_small_images_are_not_enlarged_and_bad_input_gives_none():
    thumb = make_thumbnail(np.full((40, 30, 3), 200, np.uint8))
    assert (thumb.width, thumb.height) == (30, 40)
    assert thumbnail_or_none(np.zeros((0, 0, 3), np.uint8)) is None


def test_thumbnail_data_is_stored_but_not_indexed():
    props = results_template()["template"]["mappings"]["properties"]["thumbnail"]
    assert props["properties"]["data"] == {"type": "binary"}  # binary: not searchable, no doc values
    assert props["properties"]["format"]["type"] == "keyword"


class _Analyzer:
    versions = MODEL_VERSIONS

    def analyze(self, images, texts=None):
        fields = make_result("x", size=(451, 300)).model_dump(include=set(ImageAnalysis.model_fields))
        analysis = ImageAnalysis(**fields)
        return [analysis for _ in images]

    def close(self):
        pass


class _Images:
    def load_many(self, refs):
        return [SimpleNamespace(rgb=samples.chelsea(), width=451, height=300) for _ in refs]


def test_the_worker_stores_a_thumbnail_and_publishes_the_result_without_it():
    tp = TopicPartition("posts", 0)
    consumer, producer, store = FakeConsumer({tp}), FakeProducer(), FakeStore()
    worker = AnalyzerWorker(
        AnalyzerSettings(metrics_port=0, posts_topic="posts"), consumer=OutageAwareConsumer(consumer),
        producer=OutageAwareProducer(producer), analyzer=_Analyzer(), images=_Images(), store=store,
        metrics=WorkerMetrics.create(CollectorRegistry()),
    )  # fmt: skip
    report = worker.process([Rec("posts", 0, 0, b"p-1", post_json("p-1"))])
    assert report.processed == 1
    (stored,) = store.docs
    assert stored.thumbnail is not None and (stored.thumbnail.width, stored.thumbnail.height) == (256, 170)
    (published,) = [json.loads(v) for topic, _k, v, _h in producer.sent if topic == worker.settings.results_topic]
    assert "thumbnail" not in published and published["post_id"] == "p-1"
