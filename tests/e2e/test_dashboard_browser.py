"""The dashboard in a real browser: headless Chromium (Debian's package) renders the page on demo
data served from a real noida-db; the DOM after the JS ran must hold drawn charts and the gallery.
The screenshot is kept as test-artifacts/dashboard.png.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from tests.factories import T0, make_result, tiny_png
from workers.dashboard.settings import DashboardSettings
from workers.dashboard.server import serve_dashboard
from workers.adapters.elastic import AlertSink, ResultSink, install_templates, make_es_client
from workers.devstack.servers import NoidaStore
from workers.aggregator.detection import alert_id

pytestmark = [pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def chromium_binary() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


CHROMIUM = chromium_binary()
if CHROMIUM is None:
    pytest.skip("chromium is not installed (make test installs Debian's chromium package)", allow_module_level=True)
pytest.importorskip("noida_db", reason="noida-db not installed: pip install -e '.[local,test]'")


def demo_results(image_root: Path):
    """Two hours of posts in four channels with a negative spike in one, some images on disk."""
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
            out.append(make_result(pid, channel=ch, negative=score, created_at=t, regions=rng.randint(1, 4), **extra))
    return out, spike_at


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e-dashboard")
    store = NoidaStore(tmp / "noida", log_dir=tmp / "logs")
    store.start()
    tag = uuid.uuid4().hex[:8]
    settings = DashboardSettings(
        es_url=store.url, es_results_index=f"e2e-results-{tag}", es_alerts_index=f"e2e-alerts-{tag}",
        dashboard_port=0, dashboard_image_root=tmp / "images", dashboard_refresh_s=0,
    )  # fmt: skip
    es = make_es_client(settings)
    server = None
    try:
        install_templates(es, settings)
        results, spike_at = demo_results(tmp / "images")
        ResultSink(es, settings, refresh="wait_for").write(results)
        from tests.factories import make_alert

        alert = make_alert("sport", window_start=spike_at, alert_id=alert_id("sport", "negative_spike", spike_at))
        AlertSink(es, settings, refresh="wait_for").write([alert])
        server = serve_dashboard(settings, es=es, block=False)
        yield server, tmp
    finally:
        if server is not None:
            server.stop()
        es.close()
        store.stop()


def chromium(args: list[str], profile: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_dashboard_renders_charts_and_gallery(dashboard):
    server, tmp = dashboard
    url = f"{server.url}/?range=all"
    proc = chromium(["--virtual-time-budget=15000", "--dump-dom", url], tmp / "profile-dom")
    dom = proc.stdout
    assert 'data-loaded="true"' in dom, (proc.stderr[-2000:], dom[:2000])
    negative_chart = re.search(r'<svg id="negative-chart".*?</svg>', dom, re.S).group(0)
    series = re.findall(r'<path class="series" d="M[^"]+"', negative_chart)
    assert len(series) == 4, "one negative-share line per channel"
    assert all(s.count("L") >= 20 for s in series), "lines drawn through the buckets"
    assert len(re.findall(r'class="marker alert-marker', negative_chart)) == 1
    emotion_chart = re.search(r'<svg id="emotion-chart".*?</svg>', dom, re.S).group(0)
    assert len(re.findall(r'<path class="layer" d="M[^"]+Z"', emotion_chart)) == 8
    assert len(re.findall(r'class="alert-row"', dom)) == 1
    cards = re.findall(r'class="gallery-card"', dom)
    assert len(cards) == 12
    assert len(re.findall(r'class="region-box (?:negative|positive)"', dom)) >= 12
    assert len(re.findall(r'<image href="/image/[^"]+"', dom)) >= 1, "local images are served"
    assert len(re.findall(r'class="placeholder"', dom)) >= 1, "inline images get a placeholder"
    assert len(re.findall(r'class="channel-row"', dom)) == 4

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    proc = chromium(
        ["--virtual-time-budget=15000", "--window-size=1400,2200", f"--screenshot={shot}", url], tmp / "profile-shot"
    )
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
