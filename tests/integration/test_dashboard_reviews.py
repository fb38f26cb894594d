"""Who may do what on the dashboard, and reviews as data, against a real noida-db.

Logins and roles (viewer refused writes, CSRF required, cookies signed and flagged), the trusted
auth-proxy header, the append-only reviews index, precision from reviews, channel thresholds (and
the aggregator's reader of them), and `moodwatch reviews export`.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import timedelta

import httpx
import pytest
from elasticsearch import ConflictError
from skimage import data as samples
from typer.testing import CliRunner

from pipelines.thumbnails import make_thumbnail
from schemas.reviews import ReviewV1
from tests.factories import T0, make_alert, make_result
from tests.support.dashboard import USERS, client, login, users_setting
from workers.adapters.elastic import AlertSink, ResultSink, install_templates, make_es_client
from workers.adapters.thresholds import ChannelThresholds
from workers.aggregator.detection import alert_id
from workers.dashboard.server import serve_dashboard
from workers.dashboard.settings import DashboardSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECRET = "x" * 40
THUMB = make_thumbnail(samples.chelsea())
ALERT_AT = T0 + timedelta(minutes=30)


def settings_for(noida, tag: str, **kw) -> DashboardSettings:
    base = dict(
        es_url=noida.url, es_results_index=f"rv-results-{tag}", es_alerts_index=f"rv-alerts-{tag}",
        es_reviews_index=f"rv-reviews-{tag}", es_thresholds_index=f"rv-thresholds-{tag}", dashboard_port=0,
        dashboard_refresh_s=0, dashboard_users=users_setting(), dashboard_cookie_secure=False,
        dashboard_secret_key=SECRET, metrics_port=0,
    )  # fmt: skip
    return DashboardSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def seeded(noida):
    """40 posts in `sport` one a minute (a spike alert over minutes 30-35) and 10 in `news`."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(noida, tag)
    es = make_es_client(settings)
    install_templates(es, settings)
    results = [make_result(f"sport-{i:02d}", channel="sport", negative=0.8 if 30 <= i < 35 else 0.2,
                           created_at=T0 + timedelta(minutes=i)) for i in range(40)]  # fmt: skip
    results[31] = results[31].model_copy(update={"thumbnail": THUMB, "image_width": 451, "image_height": 300})
    results += [make_result(f"news-{i:02d}", channel="news", negative=0.7, created_at=T0 + timedelta(minutes=i))
                for i in range(10)]  # fmt: skip
    ResultSink(es, settings, refresh="wait_for").write(results)
    alert = make_alert("sport", window_start=ALERT_AT, alert_id=alert_id("sport", "negative_spike", ALERT_AT))
    AlertSink(es, settings, refresh="wait_for").write([alert])
    yield tag, es, alert
    es.close()


@pytest.fixture
def dash(noida, seeded):
    """A dashboard over the seeded posts with its own (empty) reviews and thresholds indices."""
    tag, es, alert = seeded
    fresh = uuid.uuid4().hex[:8]
    settings = settings_for(noida, tag, es_reviews_index=f"rv-reviews-{fresh}", es_thresholds_index=f"rv-th-{fresh}")
    server = serve_dashboard(settings, es=es, block=False)
    yield server, alert
    server.stop()


def test_reads_need_a_login(dash):
    server, _ = dash
    anonymous = client(server)
    for path in ("/api/timeline?range=all", "/api/queue?channel=sport&range=all", "/api/precision", "/thumb/sport-01"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.get("/healthz").status_code == 200
    session = anonymous.get("/api/session").json()
    assert session["user"] is None and len(session["csrf_token"]) >= 32 and session["password_login"] is True
    assert login(server, "vera").get("/api/queue?channel=sport&range=all").status_code == 200


def test_a_viewer_is_refused_every_write(dash):
    server, alert = dash
    vera = login(server, "vera")
    resp = vera.post("/api/reviews", json={"post_id": "sport-31", "action": "confirm"})
    assert resp.status_code == 403 and "reviewer role" in resp.json()["error"]
    assert vera.post("/api/thresholds/sport", json={"spike_min_count": 5}).status_code == 403
    assert login(server, "rob").post("/api/thresholds/sport", json={"spike_min_count": 5}).status_code == 403
    assert server.store.reviews() == [] and server.store.latest_thresholds() == {}


def test_writes_need_the_sessions_csrf_token(dash):
    server, _ = dash
    rob = login(server, "rob")
    token = rob.headers.pop("X-CSRF-Token")
    body = {"post_id": "sport-31", "action": "confirm"}
    assert rob.post("/api/reviews", json=body).status_code == 403  # no token
    assert rob.post("/api/reviews", json=body, headers={"X-CSRF-Token": "0" * 43}).status_code == 403
    other = login(server, "ada").headers["X-CSRF-Token"]  # a real token, of another session
    assert rob.post("/api/reviews", json=body, headers={"X-CSRF-Token": other}).status_code == 403
    foreign = {"X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert rob.post("/api/reviews", json=body, headers=foreign).status_code == 403
    assert server.store.reviews() == []
    # the login itself is a write: no token, no login
    fresh = client(server)
    assert fresh.post("/api/login", json={"username": "rob", "password": USERS["rob"][1]}).status_code == 403
    ok = rob.post("/api/reviews", json=body, headers={"X-CSRF-Token": token, "Origin": server.url})
    assert ok.status_code == 201, ok.text


def test_a_review_is_stored_with_its_author_and_the_models_verdict(dash):
    server, alert = dash
    rob = login(server, "rob")
    resp = rob.post("/api/reviews", json={"post_id": "sport-31", "action": "confirm", "note": "clearly negative"})
    assert resp.status_code == 201, resp.text
    (stored,) = server.store.reviews_of_posts(["sport-31"])["sport-31"]
    review = ReviewV1.model_validate(stored)
    assert (review.reviewer, review.reviewer_role, review.auth_method, review.action) == (
        "rob", "reviewer", "session", "confirm")  # fmt: skip
    assert (review.model_polarity, review.model_negative_score, review.human_polarity) == ("negative", 0.8, "negative")
    assert review.alert_ids == [alert.alert_id] and review.note == "clearly negative"
    assert review.model_heads == "heads-test" and review.image_ref == "inline"
    history = rob.get("/api/reviews", params={"post_id": "sport-31"}).json()["reviews"]
    assert [r["review_id"] for r in history] == [review.review_id]
    queue = rob.get("/api/queue", params={"alert_id": alert.alert_id}).json()
    statuses = {p["post_id"]: p["status"] for p in queue["posts"]}
    assert statuses["sport-31"] == "confirmed" and statuses["sport-32"] == "open"
    assert queue["posts"][-1]["post_id"] == "sport-31", "labelled posts go after the open ones"


def test_reviews_are_append_only(dash):
    server, _ = dash
    rob = login(server, "rob")
    first = rob.post("/api/reviews", json={"post_id": "sport-32", "action": "confirm"}).json()
    second = rob.post("/api/reviews", json={"post_id": "sport-32", "action": "overturn", "polarity": "positive",
                                            "dominant_emotion": "awe"}).json()  # fmt: skip
    history = server.store.reviews_of_posts(["sport-32"])["sport-32"]
    assert [r["review_id"] for r in history] == [second["review_id"], first["review_id"]], "newest first, both kept"
    assert history[1] == first, "the first review is untouched"
    with pytest.raises(ConflictError):  # the same id again is refused by the store, never overwritten
        server.store.add_review(ReviewV1.model_validate({**first, "note": "rewritten"}))
    assert server.store.reviews_of_posts(["sport-32"])["sport-32"][1] == first


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"action": "overturn", "polarity": "negative", "dominant_emotion": "sadness"}, "must change"),
        ({"action": "overturn", "polarity": "positive", "dominant_emotion": "anger"}, "not a positive emotion"),
        ({"action": "overturn", "polarity": "positive"}, "not a positive emotion"),  # sadness kept: does not fit
        ({"action": "delete"}, "action"),
        ({"action": "confirm", "note": "x" * 2001}, "note"),
    ],
)
def test_a_review_that_does_not_make_sense_is_refused(dash, body, message):
    server, _ = dash
    resp = login(server, "rob").post("/api/reviews", json={"post_id": "sport-33", **body})
    assert resp.status_code == 422 and message in resp.json()["error"], resp.text
    assert server.store.reviews() == []


def test_unknown_post_is_404(dash):
    server, _ = dash
    assert login(server, "rob").post("/api/reviews", json={"post_id": "nope", "action": "confirm"}).status_code == 404


def test_precision_follows_the_latest_labels(dash):
    server, alert = dash
    rob = login(server, "rob")

    def sport() -> dict:
        rows = {r["channel"]: r for r in rob.get("/api/precision", params={"range": "all"}).json()["channels"]}
        return rows["sport"]

    assert rob.get("/api/precision", params={"range": "all"}).json()["channels"] == []
    rob.post("/api/reviews", json={"post_id": "sport-30", "action": "confirm"})
    rob.post("/api/reviews", json={"post_id": "sport-31", "action": "confirm"})
    row = sport()
    assert (row["model_precision"], row["flagged_reviewed"], row["alert_precision"], row["alerts_judged"]) == (
        1.0, 2, 1.0, 1)  # fmt: skip
    for post_id in ("sport-32", "sport-33"):
        rob.post("/api/reviews", json={"post_id": post_id, "action": "overturn", "polarity": "positive",
                                       "dominant_emotion": "contentment"})  # fmt: skip
    row = sport()
    assert row["model_precision"] == 0.5 and (row["flagged_confirmed"], row["flagged_reviewed"]) == (2, 4)
    assert row["alert_precision"] == 0.0, "2 of 4 reviewed posts support the alert: not more than half"
    rob.post("/api/reviews", json={"post_id": "sport-33", "action": "confirm"})  # a later label supersedes
    row = sport()
    assert (row["flagged_confirmed"], row["flagged_reviewed"], row["alert_precision"]) == (3, 4, 1.0)
    rob.post("/api/reviews", json={"post_id": "sport-34", "action": "escalate", "note": "needs legal"})
    row = sport()
    assert row["escalated_posts"] == 1 and row["flagged_reviewed"] == 4 and row["reviews"] == 6


def test_thresholds_are_set_by_admins_and_read_by_the_aggregator(dash):
    server, _ = dash
    ada = login(server, "ada")
    reader = ChannelThresholds(server.store.es, server.settings.es_thresholds_index, refresh_s=3600)
    assert reader.refresh() and reader.overrides("sport") == {}
    resp = ada.post("/api/thresholds/sport", json={"spike_min_count": 5, "spike_min_effect": 0.4, "note": "noisy"})
    assert resp.status_code == 201, resp.text
    assert ada.post("/api/thresholds/sport", json={"spike_alpha_arm": 0.5}).status_code == 422
    assert reader.refresh() and reader.overrides("sport") == {"min_count": 5, "min_effect": 0.4}
    ada.post("/api/thresholds/sport", json={"spike_alpha_arm": 1e-3})  # a newer change replaces the set
    assert reader.refresh() and reader.overrides("sport") == {"alpha_arm": pytest.approx(1e-3)}
    listed = ada.get("/api/thresholds").json()["channels"]
    assert [(c["channel"], c["changed_by"], c["spike_alpha_arm"]) for c in listed] == [("sport", "ada", 1e-3)]
    history = server.store.es.count(index=server.settings.es_thresholds_index)["count"]
    assert history == 2, "every change is kept"


def test_login_failures_are_limited_and_logout_ends_the_session(dash):
    server, _ = dash
    c = client(server)
    token = c.get("/api/session").json()["csrf_token"]
    for _ in range(5):
        resp = c.post("/api/login", json={"username": "ada", "password": "wrong"}, headers={"X-CSRF-Token": token})
        assert resp.status_code == 401
    resp = c.post("/api/login", json={"username": "ada", "password": USERS["ada"][1]}, headers={"X-CSRF-Token": token})
    assert resp.status_code == 429
    rob = login(server, "rob")
    assert rob.get("/api/config").status_code == 200
    assert rob.post("/api/logout").status_code == 200
    assert rob.get("/api/config").status_code == 401


def test_session_cookie_is_signed_and_flagged(noida, seeded):
    tag, es, _ = seeded
    server = serve_dashboard(settings_for(noida, tag, dashboard_cookie_secure=True), es=es, block=False)
    try:
        raw = httpx.get(server.url + "/api/session", trust_env=False).headers["set-cookie"].lower()
        assert "httponly" in raw and "samesite=strict" in raw and "secure" in raw and "moodwatch_session=" in raw
        tampered = client(server, cookies={"moodwatch_session": "eyJ1c2VyIjp7Im5hbWUiOiJhZGEifX0=.forged.sig"})
        assert tampered.get("/api/config").status_code == 401
    finally:
        server.stop()


def test_a_removed_user_loses_their_session(noida, seeded):
    tag, es, _ = seeded
    first = serve_dashboard(settings_for(noida, tag), es=es, block=False)
    try:
        rob = login(first, "rob")
        cookies = dict(rob.cookies)
    finally:
        first.stop()
    without_rob = {k: v for k, v in USERS.items() if k != "rob"}
    second = serve_dashboard(settings_for(noida, tag, dashboard_users=users_setting(without_rob)), es=es, block=False)
    try:
        assert client(second, cookies=cookies).get("/api/config").status_code == 401
    finally:
        second.stop()


def test_identity_header_is_believed_only_from_the_auth_proxy(noida, seeded):
    tag, es, alert = seeded
    proxy = dict(dashboard_auth_proxy_user_header="X-Auth-Request-Email",
                 dashboard_auth_proxy_groups_header="X-Auth-Request-Groups", dashboard_reviewer_groups="moderators",
                 dashboard_admin_groups="tns-admins")  # fmt: skip
    trusted = serve_dashboard(
        settings_for(
            noida,
            tag,
            dashboard_auth_proxy_ips="127.0.0.0/8",
            **proxy,
            es_reviews_index=f"rv-proxy-{uuid.uuid4().hex[:8]}",
        ),
        es=es,
        block=False,
    )
    elsewhere = serve_dashboard(settings_for(noida, tag, dashboard_auth_proxy_ips="10.0.0.0/8", **proxy), es=es,
                                block=False)  # fmt: skip
    try:
        who = {"X-Auth-Request-Email": "mia@example.org", "X-Auth-Request-Groups": "staff,moderators"}
        c = client(trusted, headers=who)
        session = c.get("/api/session").json()
        assert session["user"] == {"name": "mia@example.org", "role": "reviewer", "auth_method": "proxy"}
        resp = c.post("/api/reviews", json={"post_id": "sport-31", "action": "confirm"},
                      headers={"X-CSRF-Token": session["csrf_token"]})  # fmt: skip
        assert resp.status_code == 201 and resp.json()["reviewer"] == "mia@example.org"
        assert resp.json()["auth_method"] == "proxy"
        viewer = client(trusted, headers={"X-Auth-Request-Email": "joe@example.org"}).get("/api/session").json()
        assert viewer["user"]["role"] == "viewer"
        assert client(elsewhere, headers=who).get("/api/session").json()["user"] is None
        assert client(elsewhere, headers=who).get("/api/config").status_code == 401
    finally:
        trusted.stop()
        elsewhere.stop()


def test_reviews_export_is_one_labelled_line_per_post(dash, seeded, tmp_path, monkeypatch):
    server, _ = dash
    rob = login(server, "rob")
    rob.post("/api/reviews", json={"post_id": "sport-30", "action": "confirm"})
    rob.post("/api/reviews", json={"post_id": "sport-31", "action": "confirm"})
    rob.post("/api/reviews", json={"post_id": "sport-31", "action": "overturn", "polarity": "positive",
                                   "dominant_emotion": "awe", "note": "a team celebrating"})  # fmt: skip
    rob.post("/api/reviews", json={"post_id": "sport-32", "action": "escalate"})  # no label: not exported
    from workers.cli.main import app

    for key, value in {"ES_URL": server.settings.es_url, "ES_RESULTS_INDEX": server.settings.es_results_index,
                       "ES_REVIEWS_INDEX": server.settings.es_reviews_index}.items():  # fmt: skip
        monkeypatch.setenv(f"MOODWATCH_{key}", value)
    out = tmp_path / "reviews.jsonl"
    result = CliRunner().invoke(app, ["reviews", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    by_post = {line["post_id"]: line for line in lines}
    assert sorted(by_post) == ["sport-30", "sport-31"]
    assert by_post["sport-31"]["label"] == {"polarity": "positive", "dominant_emotion": "awe"}
    assert by_post["sport-31"]["model"]["polarity"] == "negative" and by_post["sport-31"]["reviewer"] == "rob"
    assert by_post["sport-31"]["note"] == "a team celebrating" and by_post["sport-31"]["image_ref"] == "inline"
    assert by_post["sport-30"]["label"] == {"polarity": "negative", "dominant_emotion": "sadness"}
    assert by_post["sport-30"]["text"] == "a test post" and by_post["sport-30"]["channel"] == "sport"


def test_the_stored_thumbnail_is_served_to_logged_in_people(dash):
    server, alert = dash
    assert client(server).get("/thumb/sport-31").status_code == 401
    vera = login(server, "vera")
    resp = vera.get("/thumb/sport-31")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/webp"
    assert resp.content == base64.b64decode(THUMB.data)
    assert vera.get("/thumb/sport-30").status_code == 404  # no thumbnail stored
    posts = {p["post_id"]: p for p in vera.get("/api/queue", params={"alert_id": alert.alert_id}).json()["posts"]}
    assert posts["sport-31"]["thumbnail_url"] == "/thumb/sport-31" and posts["sport-30"]["thumbnail_url"] is None
    assert "thumbnail" not in posts["sport-31"], "the list carries the URL, never the pixels"
