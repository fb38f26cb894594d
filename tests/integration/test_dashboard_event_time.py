"""Any created_at that is in the store: the dashboard's views still answer and still show real data.

Results written before event-time bounds existed (or by another producer) can hold any date. One
such document must neither break a view (year 10000 overflow, 0001-01-01 spans) nor move the time
axis away from the real posts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.factories import make_result
from workers.adapters.elastic import ResultSink, install_templates, make_es_client
from workers.dashboard.queries import RANGES, DashboardQueries
from workers.dashboard.settings import DashboardSettings

pytestmark = pytest.mark.integration

REAL_POSTS = 24


@pytest.fixture(scope="module")
def store(noida):
    tag = uuid.uuid4().hex[:8]
    cfg = DashboardSettings(
        es_url=noida.url, es_results_index=f"evt-results-{tag}", es_alerts_index=f"evt-alerts-{tag}", metrics_port=0
    )
    es = make_es_client(cfg)
    install_templates(es, cfg)
    now = datetime.now(UTC)
    real = [
        make_result(
            f"real-{i}", channel=f"ch-{i % 3}", negative=0.1 + 0.03 * i, created_at=now - timedelta(minutes=10 - i / 3)
        )
        for i in range(REAL_POSTS)
    ]
    sink = ResultSink(es, cfg, refresh="wait_for")
    sink.write(real)
    yield es, cfg, sink
    es.close()


hostile_times = st.one_of(
    st.sampled_from(
        [datetime(9999, 12, 31, 23, 59, tzinfo=UTC), datetime(1, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)]
    ),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(created_at=hostile_times)
def test_every_view_answers_and_shows_the_real_posts_whatever_one_document_claims(store, created_at):
    es, cfg, sink = store
    queries = DashboardQueries(es, cfg)
    hostile = make_result(f"hostile-{uuid.uuid4().hex[:8]}", channel="ch-0", negative=0.9, created_at=created_at)
    sink.write([hostile])
    try:
        for range_name in RANGES:
            timeline = queries.timeline(range_name)
            real_in_view = sum(b["count"] for b in timeline["buckets"])
            assert real_in_view >= REAL_POSTS, (range_name, created_at, timeline["start"], timeline["end"])
            assert len(timeline["buckets"]) <= 130, (range_name, len(timeline["buckets"]))
            emotions = queries.emotions(range_name)
            assert sum(b["count"] for b in emotions["buckets"]) >= REAL_POSTS
            channels = queries.channels(range_name)
            assert {c["channel"] for c in channels["channels"]} >= {"ch-0", "ch-1", "ch-2"}
            queries.alerts_list(range_name)
            queries.gallery(range_name, None, 10, lambda doc: None)
    finally:
        es.delete(index=cfg.es_results_index, id=hostile.post_id, refresh="wait_for")
