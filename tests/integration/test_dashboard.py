"""workers/dashboard/server.py against a real Elasticsearch-API store (noida-db) with seeded results.

One dashboard server and one seeded pair of indices per module.
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from schemas.emotions import EMOTION6_LABELS
from tests.factories import T0, make_alert, make_result, tiny_png
from tests.support.dashboard import login, users_setting
from workers.adapters.elastic import AlertSink, ResultSink, install_templates, make_es_client
from workers.aggregator.detection import alert_id
from workers.dashboard.queries import MAX_BUCKETS, pick_interval
from workers.dashboard.server import serve_dashboard
from workers.dashboard.settings import DashboardSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHANNELS = ["news", "sport", "music", "art"]
SPIKE_CHANNEL, SPIKE_AT = "sport", T0 + timedelta(hours=2)


def seed_results(image_root: Path, outside: Path) -> list:
    """3 hours of posts in 4 channels, one a minute each; a negative spike in `sport` at T0+2h."""
    rng = random.Random(5)
    image_root.mkdir(parents=True, exist_ok=True)
    results = []
    for minute in range(180):
        for ch in CHANNELS:
            t = T0 + timedelta(minutes=minute, seconds=rng.randint(0, 59))
            spike = ch == SPIKE_CHANNEL and SPIKE_AT <= t < SPIKE_AT + timedelta(minutes=15)
            negative = rng.random() < (0.9 if spike else 0.3)
            score = round(rng.uniform(0.6, 0.95) if negative else rng.uniform(0.05, 0.4), 4)
            pid = f"{ch}-{minute:03d}"
            extra = {}
            if negative and minute % 7 == 0:
                path = image_root / f"{pid}.png"
                path.write_bytes(tiny_png(64, 48, (40, 40, 160)))
                extra = {"image_ref": f"file:{path}", "size": (64, 48)}
            results.append(make_result(pid, channel=ch, negative=score, created_at=t, **extra))
    # three special ones, newest of all: outside the root, a URL, a traversal attempt
    last = T0 + timedelta(hours=3)
    results.append(make_result("outside", channel="art", negative=0.9, created_at=last, image_ref=f"file:{outside}"))
    results.append(
        make_result("remote", channel="art", negative=0.9, created_at=last, image_ref="https://example.org/x.png")
    )
    results.append(make_result("sneaky", channel="art", negative=0.9, created_at=last,
                               image_ref=f"file:{image_root}/../outside.png"))  # fmt: skip
    return results


class RecordingES:
    """Proxy that records every search the dashboard sends."""

    def __init__(self, es):
        self._es = es
        self.searches: list[dict] = []

    def search(self, **kw):
        self.searches.append(kw)
        return self._es.search(**kw)

    def __getattr__(self, name):
        return getattr(self._es, name)


@pytest.fixture(scope="module")
def dash(noida, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    tag = uuid.uuid4().hex[:8]
    settings = DashboardSettings(
        es_url=noida.url, es_results_index=f"dash-results-{tag}", es_alerts_index=f"dash-alerts-{tag}",
        es_reviews_index=f"dash-reviews-{tag}", es_thresholds_index=f"dash-thresholds-{tag}",
        dashboard_port=0, dashboard_image_root=tmp / "images", dashboard_refresh_s=0, store_retry_max_s=10,
        dashboard_users=users_setting(), dashboard_cookie_secure=False,
    )  # fmt: skip
    outside = tmp / "outside.png"
    outside.write_bytes(tiny_png(8, 8))
    es = make_es_client(settings)
    install_templates(es, settings)
    results = seed_results(tmp / "images", outside)
    ResultSink(es, settings, refresh="wait_for").write(results)
    alert = make_alert(
        SPIKE_CHANNEL, window_start=SPIKE_AT, alert_id=alert_id(SPIKE_CHANNEL, "negative_spike", SPIKE_AT)
    )
    AlertSink(es, settings, refresh="wait_for").write([alert])
    recording = RecordingES(es)
    server = serve_dashboard(settings, es=recording, block=False)
    yield server, results, alert, recording
    server.stop()
    es.close()


_viewers: dict[int, httpx.Client] = {}


def get(server, path: str) -> tuple[int, str, bytes]:
    """GET as a logged-in viewer (reads need a login)."""
    if id(server) not in _viewers:
        _viewers[id(server)] = login(server, "vera")
    resp = _viewers[id(server)].get(path)
    return resp.status_code, resp.headers.get("content-type", ""), resp.content


def get_json(server, path: str) -> dict:
    status, ctype, body = get(server, path)
    assert status == 200, body
    assert ctype.startswith("application/json")
    return json.loads(body)


def test_timeline_is_a_date_histogram_of_negative_share_per_channel(dash):
    server, results, _, recording = dash
    recording.searches.clear()
    data = get_json(server, "/api/timeline?range=all")
    assert data["interval_s"] == pick_interval(timedelta(hours=3)) and len(data["buckets"]) <= MAX_BUCKETS
    assert set(data["channels"]) == set(CHANNELS)
    assert sum(b["count"] for b in data["buckets"]) == len(results)
    # one aggregation request does the work (plus the two 1-hit bound lookups)
    aggs = [s for s in recording.searches if s.get("aggs")]
    assert len(aggs) == 1 and aggs[0]["size"] == 0
    assert "date_histogram" in aggs[0]["aggs"]["over_time"]
    assert "terms" in aggs[0]["aggs"]["over_time"]["aggs"]["channel"]
    # the numbers are right for every bucket and channel
    step = data["interval_s"]
    expected: dict[tuple[int, str], list[int]] = {}
    for r in results:
        key = (int(r.created_at.timestamp()) // step * step, r.channel)
        n, neg = expected.setdefault(key, [0, 0]), r.polarity == "negative"
        n[0] += 1
        n[1] += neg
    seen = 0
    for b in data["buckets"]:
        from workers.dashboard.queries import _parse_time

        t = int(_parse_time(b["t"]).timestamp())
        for ch, v in b["channels"].items():
            count, negative = expected[(t, ch)]
            assert (v["count"], v["negative"]) == (count, negative)
            assert v["negative_share"] == pytest.approx(negative / count)
            seen += 1
    assert seen == len(expected)
    lo, hi = (t.isoformat().replace("+00:00", "Z") for t in (SPIKE_AT, SPIKE_AT + timedelta(minutes=10)))
    spike = [b["channels"][SPIKE_CHANNEL]["negative_share"] for b in data["buckets"]
             if lo <= b["t"] < hi and SPIKE_CHANNEL in b["channels"]]  # fmt: skip
    assert spike and min(spike) > 0.6


def test_ranges_are_relative_to_the_newest_post(dash):
    server, *_ = dash
    data = get_json(server, "/api/timeline?range=1h")
    from workers.dashboard.queries import _parse_time

    start, end = _parse_time(data["start"]), _parse_time(data["end"])
    assert timedelta(hours=1) <= end - start < timedelta(hours=1, minutes=2)
    assert end > T0 + timedelta(hours=3) >= end - timedelta(minutes=1)
    status, _, body = get(server, "/api/timeline?range=forever")
    assert status == 400 and b"range must be one of" in body


def test_emotion_mix_buckets_are_mean_distributions(dash):
    server, results, *_ = dash
    data = get_json(server, f"/api/emotions?range=all&channel={SPIKE_CHANNEL}")
    assert data["emotions"] == list(EMOTION6_LABELS)  # the measured distribution (README, "Emotion output")
    full = [b for b in data["buckets"] if b["count"]]
    assert sum(b["count"] for b in full) == sum(r.channel == SPIKE_CHANNEL for r in results)
    for b in full:
        assert sum(b["mean"].values()) == pytest.approx(1.0, abs=1e-4)
    spike = [b for b in full if b["t"].startswith("2025-01-01T14:0")]
    assert spike and all(b["mean"]["sadness"] > b["mean"]["joy"] for b in spike)


def test_channels_alerts_and_gallery(dash):
    server, results, alert, _ = dash
    chans = {c["channel"]: c for c in get_json(server, "/api/channels?range=all")["channels"]}
    counts = Counter(r.channel for r in results)
    negatives = Counter(r.channel for r in results if r.polarity == "negative")
    assert {c: v["count"] for c, v in chans.items()} == dict(counts)
    assert {c: v["negative"] for c, v in chans.items()} == dict(negatives)
    assert all(
        v["neutral"] == sum(r.channel == c and r.polarity == "neutral" for r in results) for c, v in chans.items()
    )

    alerts = get_json(server, "/api/alerts?range=all")["alerts"]
    assert [a["alert_id"] for a in alerts] == [alert.alert_id]

    posts = get_json(server, "/api/gallery?range=all&size=40")["posts"]
    assert len(posts) == 40 and all(p["polarity"] == "negative" for p in posts)
    assert [p["created_at"] for p in posts] == sorted((p["created_at"] for p in posts), reverse=True)
    by_id = {p["post_id"]: p for p in posts}
    assert by_id["outside"]["image_url"] is None and by_id["remote"]["image_url"] is None
    assert by_id["sneaky"]["image_url"] is None
    local = [p for p in posts if p["image_ref"].startswith("file:") and p["post_id"] not in ("outside", "sneaky")]
    assert local and all(p["image_url"] == f"/image/{p['post_id']}" for p in local)
    assert all(p["regions"] and p["evidence"] for p in posts)

    status, ctype, body = get(server, local[0]["image_url"])
    assert status == 200 and ctype == "image/png" and body.startswith(b"\x89PNG")
    for pid in ("outside", "remote", "sneaky", "no-such-post", "..%2F..%2Fetc%2Fpasswd"):
        assert get(server, f"/image/{pid}")[0] == 404, pid


def test_static_page_and_assets(dash):
    server, *_ = dash
    status, ctype, body = get(server, "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="negative-chart"' in body
    status, ctype, body = get(server, "/static/app.js")
    assert status == 200 and "javascript" in ctype and b"/api/timeline" in body
    assert get(server, "/static/../dashboard.py")[0] == 404
    assert get(server, "/nope")[0] == 404
    cfg = get_json(server, "/api/config")
    assert cfg["refresh_s"] == 0 and "all" in cfg["ranges"]
    import time

    from prometheus_client import generate_latest

    wanted = ('moodwatch_dashboard_requests_total{code="200",endpoint="/api/config"}',
              'moodwatch_dashboard_requests_total{code="404",endpoint="other"}')  # fmt: skip
    deadline = time.monotonic() + 5  # counted right after the response is written
    while not all(w in generate_latest(server.registry).decode() for w in wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    exposition = generate_latest(server.registry).decode()
    assert all(w in exposition for w in wanted), exposition


def test_empty_indices_answer_empty_views(noida):
    tag = uuid.uuid4().hex[:8]
    settings = DashboardSettings(
        es_url=noida.url, es_results_index=f"dash-empty-r-{tag}", es_alerts_index=f"dash-empty-a-{tag}",
        es_reviews_index=f"dash-empty-rv-{tag}", es_thresholds_index=f"dash-empty-th-{tag}", dashboard_port=0,
        dashboard_users=users_setting(), dashboard_cookie_secure=False,
    )  # fmt: skip
    es = make_es_client(settings)
    install_templates(es, settings)
    server = serve_dashboard(settings, es=es, block=False)
    try:
        assert get_json(server, "/api/timeline?range=24h")["buckets"] == []
        assert get_json(server, "/api/gallery")["posts"] == []
        assert get_json(server, "/api/alerts")["alerts"] == []
    finally:
        server.stop()
        es.close()
