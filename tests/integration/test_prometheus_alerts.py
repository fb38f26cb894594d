"""The chart's alert rules fire against a real Prometheus + Alertmanager (Debian packages).

A worker-like metrics endpoint (serve_health + WorkerMetrics on a fresh registry) is scraped by a
real Prometheus under the job name the rules expect (`moodwatch-analyzer`). Prometheus evaluates a
copy of helm/moodwatch/files/prometheus-rules.yaml whose expressions are unchanged; only `for:` and
group `interval:` are shortened so the test runs in seconds. Alerts are routed to a real
Alertmanager and read back from its /api/v2/alerts. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from workers.analyzer.metrics import WorkerMetrics
from workers.common.health import HealthState, serve_health
from workers.devstack.servers import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "moodwatch" / "files" / "prometheus-rules.yaml"
JOB = "moodwatch-analyzer"  # the rules select job=~"moodwatch-(analyzer|aggregator|dashboard)"
NAMESPACE = "moodwatch-it"  # the chart's ServiceMonitor adds `namespace`; rules sum by it

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

if not PROMETHEUS or not ALERTMANAGER:
    pytest.skip(
        "needs /usr/bin/prometheus and /usr/bin/prometheus-alertmanager "
        "(apt-get install prometheus prometheus-alertmanager; see `make system-deps`)",
        allow_module_level=True,
    )

# Loopback only: never use a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str, timeout: float = 2.0):
    with _OPENER.open(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _ready(url: str) -> bool:
    try:
        with _OPENER.open(url + "/-/ready", timeout=1.0) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def _test_rules(dst: Path) -> list[str]:
    """Copy of the real rules with every expression unchanged; returns the alert names."""
    doc = yaml.safe_load(RULES.read_text())
    alerts = []
    for group in doc["groups"]:
        # The recording group evaluates every 30s in production; the alert rules read its series,
        # so evaluate it every second here (the global evaluation_interval below is 1s as well).
        if "interval" in group:
            group["interval"] = "1s"
        for rule in group["rules"]:
            if "alert" in rule:
                # The real `for:` durations are minutes (3m-15m); 0s makes an alert fire on the
                # first evaluation where its expression holds. The expression itself is untouched.
                rule["for"] = "0s"
                alerts.append(rule["alert"])
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return alerts


class _Proc:
    def __init__(self, name: str, argv: list[str], log: Path, url: str) -> None:
        self.name, self.log, self.url = name, log, url
        self._fh = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{_tail(self.log)}")
            if _ready(self.url):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._fh.close()


@pytest.fixture()
def monitoring(tmp_path):
    registry = CollectorRegistry()
    metrics = WorkerMetrics.create(registry)
    endpoint = serve_health(HealthState(), "127.0.0.1", port=0, registry=registry)
    # The handler speaks HTTP/1.1 keep-alive and HealthServer.shutdown() only closes the listening
    # socket: Prometheus' open scrape connection would keep being served. Record accepted sockets
    # so `kill_endpoint` can drop them too, as a dying worker process would.
    conns: list[socket.socket] = []
    accept = endpoint.get_request

    def get_request():
        sock, addr = accept()
        conns.append(sock)
        return sock, addr

    endpoint.get_request = get_request

    def kill_endpoint() -> None:
        endpoint.shutdown()
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    procs: list[_Proc] = []
    try:
        rules = tmp_path / "rules.yaml"
        alert_names = _test_rules(rules)
        if PROMTOOL:
            check = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr

        am_port, prom_port = free_port(), free_port()
        am_cfg = tmp_path / "alertmanager.yml"
        am_cfg.write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "null",
                        "group_by": ["alertname"],
                        "group_wait": "1s",
                        "group_interval": "1s",
                        "repeat_interval": "1h",
                    },
                    "receivers": [{"name": "null"}],
                }
            )
        )
        am = _Proc(
            "alertmanager",
            [
                ALERTMANAGER,
                f"--config.file={am_cfg}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # no gossip mesh (would bind 0.0.0.0:9094)
            ],
            tmp_path / "alertmanager.log",
            f"http://127.0.0.1:{am_port}",
        )
        procs.append(am)

        prom_cfg = tmp_path / "prometheus.yml"
        prom_cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                    "rule_files": [str(rules)],
                    "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
                    "scrape_configs": [
                        {
                            "job_name": JOB,
                            "static_configs": [
                                {"targets": [f"127.0.0.1:{endpoint.port}"], "labels": {"namespace": NAMESPACE}}
                            ],
                        }
                    ],
                }
            )
        )
        prom = _Proc(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
            f"http://127.0.0.1:{prom_port}",
        )
        procs.append(prom)
        am.wait_ready()
        prom.wait_ready()
        yield {
            "metrics": metrics,
            "kill_endpoint": kill_endpoint,
            "prom": prom,
            "am": am,
            "alert_names": alert_names,
        }
    finally:
        kill_endpoint()
        for p in reversed(procs):
            p.stop()


def _am_alerts(am: _Proc) -> dict[str, dict]:
    return {a["labels"]["alertname"]: a for a in _get_json(am.url + "/api/v2/alerts?active=true")}


def _prom_firing(prom: _Proc) -> dict[str, dict]:
    data = _get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in data if a["state"] == "firing"}


def _wait_for(fn, want: set[str], timeout: float, what: str, logs: list[_Proc]) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    seen: dict[str, dict] = {}
    while time.monotonic() < deadline:
        try:
            seen = fn()
        except (urllib.error.URLError, OSError, ValueError):
            seen = {}
        if want <= seen.keys():
            return seen
        time.sleep(0.5)
    pytest.fail(
        f"{what}: wanted {sorted(want)}, got {sorted(seen)} after {timeout}s\n"
        + "\n".join(f"--- {p.name} log ---\n{_tail(p.log, 20)}" for p in logs)
    )


def test_worker_alert_rules_fire(monitoring):
    metrics: WorkerMetrics = monitoring["metrics"]
    prom, am = monitoring["prom"], monitoring["am"]
    assert {"MoodwatchDeadLetterRateHigh", "MoodwatchStoreErrors", "MoodwatchWorkerDown"} <= set(
        monitoring["alert_names"]
    )

    # Drive the counters across many scrapes: 40 posts/s consumed, 8/s dead-lettered (20% > 5%,
    # and > 0.1/s), 4 store errors/s.
    stop = threading.Event()

    def drive() -> None:
        while not stop.is_set():
            metrics.posts_consumed.inc(10)
            metrics.posts_processed.inc(8)
            metrics.posts_dead_lettered.labels(stage="analyze").inc(2)
            metrics.store_errors.inc()
            stop.wait(0.25)

    driver = threading.Thread(target=drive, name="drive-metrics", daemon=True)
    driver.start()
    try:
        # The target is up: the up==0 rule must not fire while the endpoint serves.
        want = {"MoodwatchDeadLetterRateHigh", "MoodwatchStoreErrors"}
        in_am = _wait_for(lambda: _am_alerts(am), want, 90, "Alertmanager /api/v2/alerts", [prom, am])
        for name in want:
            labels = in_am[name]["labels"]
            assert labels["namespace"] == NAMESPACE, labels
            assert labels["severity"] == "warning", labels
        firing = _prom_firing(prom)
        assert "MoodwatchWorkerDown" not in firing
        assert "MoodwatchAnalyzerAbsent" not in firing
        ratio = float(firing["MoodwatchDeadLetterRateHigh"]["value"])
        assert 0.1 < ratio < 0.35, ratio  # ~2/10 dead-lettered per consumed
    finally:
        stop.set()
        driver.join(timeout=5)

    # Kill the worker's endpoint (listener and open connections): the next scrape fails, up == 0.
    monitoring["kill_endpoint"]()
    firing = _wait_for(
        lambda: _prom_firing(prom),
        {"MoodwatchWorkerDown", "MoodwatchAnalyzerAbsent"},
        60,
        "Prometheus /api/v1/alerts",
        [prom, am],
    )
    down = firing["MoodwatchWorkerDown"]["labels"]
    assert down["job"] == JOB and down["severity"] == "critical", down
    _wait_for(lambda: _am_alerts(am), {"MoodwatchWorkerDown"}, 30, "Alertmanager /api/v2/alerts", [prom, am])
