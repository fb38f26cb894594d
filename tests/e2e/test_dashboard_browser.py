"""The dashboard in a real browser: headless Chromium (Debian's package), driven over the DevTools
protocol (tests/support/browser.py), on demo data served from a real noida-db.

- a viewer logs in and sees drawn charts and the gallery (screenshot test-artifacts/dashboard.png);
- a reviewer logs in, opens the posts of an alert, overturns one with the keyboard; the review is
  stored with its author, the precision figure changes; a viewer pressing the same key is refused;
  the queue is kept as test-artifacts/review-queue.png;
- a post text with markup is shown as text, never run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from skimage import data as samples

from pipelines.thumbnails import make_thumbnail
from schemas.emotions import EMOTION6_LABELS
from schemas.reviews import ReviewV1
from tests.factories import T0, make_alert, make_result, tiny_png
from tests.support.browser import Chromium
from tests.support.dashboard import USERS, users_setting
from workers.adapters.elastic import AlertSink, ResultSink, install_templates, make_es_client
from workers.aggregator.detection import alert_id
from workers.dashboard.server import serve_dashboard
from workers.dashboard.settings import DashboardSettings
from workers.devstack.servers import NoidaStore

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
HOSTILE_TEXT = (
    '<script>document.body.dataset.pwned = "script"</script><img src=x onerror="document.body.dataset.pwned = 1">'
)
HOSTILE = '#queue .queue-item[data-post-id="hostile-1"] .post-text'


def chromium_binary() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = chromium_binary()
if CHROMIUM is None:
    pytest.skip("chromium is not installed (make test installs Debian's chromium package)", allow_module_level=True)
pytest.importorskip("noida_db", reason="noida-db not installed: pip install -e '.[local,test]'")


PHOTOS = [getattr(samples, name)() for name in ("chelsea", "coffee", "rocket", "astronaut", "hubble_deep_field")]
THUMBNAILS = [(make_thumbnail(p), (p.shape[1], p.shape[0])) for p in PHOTOS]


def demo_results(image_root: Path):
    """Two hours of posts in four channels with a negative spike in one, some images on disk; the inline
    images of the spike carry stored thumbnails (real photos)."""
    rng = random.Random(11)
    image_root.mkdir(parents=True, exist_ok=True)
    channels = ["news", "sport", "music", "art"]
    spike_at = T0 + timedelta(minutes=80)
    out = []
    for i in range(0, 360):  # three posts a minute per channel
        minute = i // 3
        for ch in channels:
            t = T0 + timedelta(minutes=minute, seconds=20 * (i % 3) + rng.randint(0, 19))
            spiking = ch == "sport" and spike_at <= t < spike_at + timedelta(minutes=10)
            neg = rng.random() < (0.9 if spiking else 0.3)
            score = round(rng.uniform(0.6, 0.95) if neg else rng.uniform(0.05, 0.4), 4)
            pid = f"{ch}-{i:04d}"
            extra = {}
            if neg and i % 5 == 0:
                w, h = rng.choice([(320, 240), (240, 320), (300, 300)])
                path = image_root / f"{pid}.png"
                path.write_bytes(tiny_png(w, h, (rng.randint(60, 200), 60, 90)))
                extra = {"image_ref": f"file:{path}", "size": (w, h)}
            elif spiking or i % 4:
                thumbnail, size = THUMBNAILS[i % len(THUMBNAILS)]
                extra = {"thumbnail": thumbnail, "size": size}
            out.append(make_result(pid, channel=ch, negative=score, created_at=t, regions=rng.randint(1, 4), **extra))
    hostile = make_result("hostile-1", channel="sport", negative=0.55, created_at=spike_at + timedelta(seconds=30),
                          text=HOSTILE_TEXT)  # fmt: skip
    return [*out, hostile], spike_at


def seed_reviews(store, results, alert) -> list[str]:
    """Two earlier confirmations of negative posts in the alert's window: model precision 2/2."""
    window = [r for r in results if r.channel == alert.channel and alert.window_start <= r.created_at < alert.window_end
              and r.polarity == "negative" and r.post_id != "hostile-1"]  # fmt: skip
    seeded = []
    for r in window[:2]:
        store.add_review(ReviewV1(
            review_id=uuid.uuid4().hex, post_id=r.post_id, channel=r.channel, post_created_at=r.created_at,
            reviewed_at=r.created_at + timedelta(minutes=30), reviewer="ada", reviewer_role="admin",
            auth_method="session", action="confirm", model_polarity=r.polarity, model_negative_score=r.negative_score,
            model_dominant_emotion=r.dominant_emotion, human_polarity=r.polarity,
            human_dominant_emotion=r.dominant_emotion, alert_ids=[alert.alert_id], image_ref=r.image_ref,
        ))  # fmt: skip
        seeded.append(r.post_id)
    return seeded


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-dashboard")
    store = NoidaStore(tmp / "noida", log_dir=tmp / "logs")
    store.start()
    tag = uuid.uuid4().hex[:8]
    settings = DashboardSettings(
        es_url=store.url, es_results_index=f"e2e-results-{tag}", es_alerts_index=f"e2e-alerts-{tag}",
        es_reviews_index=f"e2e-reviews-{tag}", es_thresholds_index=f"e2e-thresholds-{tag}",
        dashboard_port=0, dashboard_image_root=tmp / "images", dashboard_refresh_s=0,
        dashboard_users=users_setting(), dashboard_cookie_secure=True,  # Chromium keeps Secure cookies on loopback
    )  # fmt: skip
    es = make_es_client(settings)
    server = browser = None
    try:
        install_templates(es, settings)
        results, spike_at = demo_results(tmp / "images")
        ResultSink(es, settings, refresh="wait_for").write(results)
        alert = make_alert("sport", window_start=spike_at, alert_id=alert_id("sport", "negative_spike", spike_at))
        AlertSink(es, settings, refresh="wait_for").write([alert])
        server = serve_dashboard(settings, es=es, block=False)
        seed_reviews(server.store, results, alert)
        browser = Chromium(CHROMIUM, tmp / "profile")
        yield server, browser, alert
    finally:
        if browser is not None:
            browser.close()
        if server is not None:
            server.stop()
        es.close()
        store.stop()


def logged_in(browser: Chromium, server, name: str, path: str = "/?range=all"):
    """A fresh browser context (its own cookies) with `name` logged in through the page's form."""
    page = browser.new_page()
    page.goto(server.url + path)
    page.wait_for('document.body.dataset.loaded === "login"')
    page.type_into("#login-user", name)
    page.type_into("#login-password", USERS[name][1])
    page.press("Enter")
    assert page.wait_for('document.body.dataset.loaded === "true" || document.body.dataset.loaded === "error"')
    assert page.evaluate("document.body.dataset.loaded") == "true"
    return page


def test_login_is_required_to_see_anything(dashboard):
    server, browser, _ = dashboard
    page = browser.new_page()
    page.goto(server.url + "/?range=all")
    page.wait_for('document.body.dataset.loaded === "login"')
    assert page.evaluate("document.getElementById('main').hidden") is True
    assert page.evaluate("document.querySelectorAll('.gallery-card').length") == 0


def test_dashboard_renders_charts_and_gallery(dashboard):
    server, browser, _ = dashboard
    page = logged_in(browser, server, "vera")
    dom = page.evaluate("document.documentElement.outerHTML")
    negative_chart = re.search(r'<svg id="negative-chart".*?</svg>', dom, re.S).group(0)
    series = re.findall(r'<path class="series" d="M[^"]+"', negative_chart)
    assert len(series) == 4, "one negative-share line per channel"
    assert all(s.count("L") >= 20 for s in series), "lines drawn through the buckets"
    assert len(re.findall(r'class="marker alert-marker', negative_chart)) == 1
    emotion_chart = re.search(r'<svg id="emotion-chart".*?</svg>', dom, re.S).group(0)
    layers = re.findall(r'<path class="layer" d="M[^"]+Z"', emotion_chart)
    assert len(layers) == len(EMOTION6_LABELS), "one stacked layer per Emotion6 label (the measured distribution)"
    assert len(re.findall(r'class="alert-row"', dom)) == 1
    cards = re.findall(r'class="gallery-card"', dom)
    assert len(cards) == 12
    assert len(re.findall(r'class="region-box (?:negative|positive)"', dom)) >= 12
    assert len(re.findall(r'<image href="/image/[^"]+"', dom)) >= 1, "local images are served"
    assert len(re.findall(r'class="placeholder"', dom)) >= 1, "inline images without a thumbnail get a placeholder"
    assert len(re.findall(r'class="channel-row"', dom)) == 4
    assert page.evaluate("document.getElementById('whoami').textContent") == "vera · viewer"
    thumbs = re.findall(r'<image href="(/thumb/[^"]+)"', dom)
    assert thumbs, "stored thumbnails are shown for inline images"
    fetched = f"fetch({json.dumps(thumbs[0])}).then(r => [r.status, r.headers.get('content-type')])"
    status, ctype = page.evaluate(fetched)
    assert (status, ctype) == (200, "image/webp")
    decoded = (
        "new Promise((ok, bad) => { const im = new Image(); im.onload = () => ok([im.naturalWidth, im.naturalHeight]);"
        f" im.onerror = () => bad(new Error('undecodable')); im.src = {json.dumps(thumbs[0])}; }})"
    )
    assert max(page.evaluate(decoded)) == 256, "the browser decodes the stored thumbnail"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = page.screenshot(ARTIFACTS / "dashboard.png", full_page=True)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def open_alert_queue(page, alert) -> dict:
    page.evaluate(f"document.querySelector('button.review-alert[data-alert-id={json.dumps(alert.alert_id)}]').click()")
    page.wait_for(f"document.getElementById('queue-card').dataset.alertId === {json.dumps(alert.alert_id)}"
                  " && document.querySelectorAll('#queue .queue-item').length > 0")  # fmt: skip
    return page.evaluate("({post: current(), items: document.querySelectorAll('#queue .queue-item').length})")


def listen(page, event: str) -> None:
    """Arm a promise for the page's next `moodwatch:<event>` before the action that fires it."""
    page.evaluate(f"window.__next = new Promise(r => document.addEventListener('moodwatch:{event}', "
                  "e => r(e.detail), {once: true})); true")  # fmt: skip


def model_precision(page, channel: str) -> str:
    return page.evaluate(f"document.querySelector('tr.precision-row[data-channel={json.dumps(channel)}] "
                         "td.model-precision').textContent")  # fmt: skip


def test_reviewer_overturns_an_alert_post_with_the_keyboard_and_a_viewer_cannot(dashboard):
    server, browser, alert = dashboard
    page = logged_in(browser, server, "rob")
    assert model_precision(page, "sport") == "100% (2/2)"
    queue = open_alert_queue(page, alert)
    post = queue["post"]
    assert post["status"] == "open" and post["polarity"] == "negative" and post["alert_ids"] == [alert.alert_id]
    assert page.evaluate("document.querySelector('#queue .queue-item.selected').dataset.postId") == post["post_id"]

    listen(page, "reviewed")
    page.press("o")  # overturn: the editor opens with the other polarity and its likeliest emotion
    assert page.evaluate("document.querySelector('#queue .queue-item.selected .overturn').hidden") is False
    assert page.evaluate("document.querySelector('#queue .queue-item.selected .overturn-polarity').value") == "positive"
    emotion = page.evaluate("document.querySelector('#queue .queue-item.selected .overturn-emotion').value")
    page.press("Enter")
    done = page.evaluate("window.__next")
    assert done["ok"] is True, done
    saved = done["review"]
    assert (saved["post_id"], saved["action"], saved["reviewer"], saved["human_polarity"]) == (
        post["post_id"], "overturn", "rob", "positive")  # fmt: skip
    assert saved["human_dominant_emotion"] == emotion and saved["model_polarity"] == "negative"

    stored = server.store.reviews_of_posts([post["post_id"]])[post["post_id"]]
    assert [(r["reviewer"], r["reviewer_role"], r["action"], r["human_polarity"]) for r in stored] == [
        ("rob", "reviewer", "overturn", "positive")]  # fmt: skip
    page.wait_for("document.querySelector('tr.precision-row[data-channel=\"sport\"] td.model-precision')"
                  ".textContent === '67% (2/3)'")  # fmt: skip
    item = f"#queue .queue-item[data-post-id={json.dumps(post['post_id'])}]"
    assert page.evaluate(f"document.querySelector({json.dumps(item)}).dataset.status") == "overturned"
    assert "rob overturned → positive" in page.evaluate(f"document.querySelector({json.dumps(item)}).textContent")

    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.getElementById('queue-card').scrollIntoView()")
    shot = page.screenshot(ARTIFACTS / "review-queue.png", clip_selector="#queue-card")
    assert shot.stat().st_size > 20_000

    # the same action as a viewer: the page sends it, the server refuses it, nothing is stored
    viewer = logged_in(browser, server, "vera")
    open_alert_queue(viewer, alert)
    assert viewer.evaluate("document.querySelector('#queue .queue-item.selected .act-confirm').disabled") is True
    before = len(server.store.reviews(limit=1000))
    listen(viewer, "reviewed")
    viewer.press("c")
    refused = viewer.evaluate("window.__next")
    assert refused["ok"] is False and refused["status"] == 403, refused
    assert "reviewer role" in refused["message"]
    assert "refused" in viewer.evaluate("document.getElementById('queue-message').textContent")
    assert len(server.store.reviews(limit=1000)) == before


def test_markup_in_a_post_is_shown_as_text(dashboard):
    server, browser, alert = dashboard
    page = logged_in(browser, server, "vera")
    open_alert_queue(page, alert)
    assert page.evaluate(f"document.querySelector('{HOSTILE}').textContent") == HOSTILE_TEXT
    assert page.evaluate("document.querySelectorAll('#queue .post-text script, #queue .post-text img').length") == 0
    assert page.evaluate("document.body.dataset.pwned === undefined") is True
    html = page.evaluate(f"document.querySelector('{HOSTILE}').innerHTML")
    assert html.startswith("&lt;script&gt;")


def test_an_admin_sets_a_channels_alert_thresholds_on_the_page(dashboard):
    server, browser, _ = dashboard
    page = logged_in(browser, server, "ada")
    cell = "document.querySelector('tr.precision-row[data-channel=\"sport\"] td.thresholds-cell').textContent"
    assert page.evaluate(cell) == "global · global · global"
    page.evaluate("document.querySelector('tr.precision-row[data-channel=\"sport\"] button').click()")
    page.type_into("#th-min-count", "20")
    page.type_into("#th-effect", "0.3")
    listen(page, "precision")
    page.evaluate("document.querySelector('#thresholds-form button[type=submit]').click()")
    page.evaluate("window.__next")
    assert page.evaluate(cell) == "20 · global · 0.3"
    (change,) = server.store.latest_thresholds().values()
    assert (change.channel, change.changed_by) == ("sport", "ada")
    assert change.overrides() == {"min_count": 20, "min_effect": 0.3}
    viewer = logged_in(browser, server, "vera")
    assert viewer.evaluate("document.querySelectorAll('tr.precision-row button').length") == 0, "no edit for viewers"
