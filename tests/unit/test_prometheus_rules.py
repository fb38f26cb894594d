"""helm/moodwatch/files/prometheus-rules.yaml: promtool when installed, plus a structural check that always runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parents[2] / "helm" / "moodwatch" / "files" / "prometheus-rules.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# Triton's metrics the rules may use (the analyzer's come from workers/analyzer/metrics.py below)
TRITON_METRICS = {"nv_inference_request_failure", "nv_inference_request_success", "nv_inference_queue_duration_us"}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}


def exported_metrics() -> set[str]:
    """Series names the analyzer's WorkerMetrics exposes, read from a fresh registry."""
    from prometheus_client import CollectorRegistry

    from workers.analyzer.metrics import WorkerMetrics

    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    return {fam.name + sfx for fam in registry.collect() for sfx in SUFFIXES.get(fam.type, ("",))}


PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "by",
    "on",
    "and",
    "or",
    "unless",
    "rate",
    "deriv",
    "absent",
    "clamp_min",
    "histogram_quantile",
    "group_left",
    "ignoring",
    "without",
    "le",
    "namespace",
    "partition",
    "stage",
    "model",
    "job",
    "e",
    "bool",
}


@pytest.fixture(scope="module")
def rules() -> dict:
    return yaml.safe_load(RULES.read_text())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not on PATH (Debian package `prometheus`)")
def test_promtool_check_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_structure(rules):
    assert set(rules) == {"groups"}
    names = [g["name"] for g in rules["groups"]]
    assert len(names) == len(set(names))
    alerts, records = [], []
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        assert group["rules"]
        for rule in group["rules"]:
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            assert ("alert" in rule) != ("record" in rule), rule
            if "record" in rule:
                assert set(rule) <= {"record", "expr", "labels"}
                assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])
                records.append(rule["record"])
                continue
            assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", rule["alert"])
            assert DURATION.match(rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]
            alerts.append(rule["alert"])
    assert len(alerts) == len(set(alerts))
    assert len(records) == len(set(records))


def test_alerts_the_operators_need(rules):
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "MoodwatchWorkerDown",
        "MoodwatchConsumerLagGrowing",
        "MoodwatchDeadLetterRateHigh",
        "TritonInferenceErrors",
        "TritonQueueTimeHigh",
    } <= set(alerts)
    assert "up{" in alerts["MoodwatchWorkerDown"]["expr"]
    assert "deriv(" in alerts["MoodwatchConsumerLagGrowing"]["expr"]


def test_rules_use_only_known_metrics(rules):
    """Every metric a rule reads exists (exported by the analyzer or Triton, or recorded here)."""
    known = exported_metrics() | TRITON_METRICS | {"up"}
    for name in (
        "moodwatch_posts_consumed_total",
        "moodwatch_posts_dead_lettered_total",
        "moodwatch_consumer_lag",
        "moodwatch_stage_duration_seconds_bucket",
        "moodwatch_store_errors_total",
    ):
        assert name in known
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # drop label values
            expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop range selectors
            expr = re.sub(r"\{[^}]*\}", "", expr)  # drop label matchers
            for name in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
                if name in PROMQL_WORDS or re.fullmatch(r"e[0-9-]*", name):
                    continue
                assert name in known or name in recorded, (
                    f"{rule.get('alert') or rule.get('record')}: unknown metric {name}"
                )
