"""Structural checks of the Grafana dashboard and Kibana saved objects shipped in the chart.

No Grafana or Kibana can run here, so: the files parse, carry the keys their importers need, their
panels lie on the grid, every Elasticsearch field they name exists (with a fitting type) in the
mapping generated from the contracts (schemas.es_templates), every Prometheus metric they name is
one the workers export, and every Kibana reference resolves inside the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from schemas.es_templates import alerts_template, results_template

FILES = Path(__file__).resolve().parents[2] / "helm" / "moodwatch" / "files"
GRAFANA = FILES / "grafana-dashboard.json"
KIBANA = FILES / "kibana-saved-objects.ndjson"

RESULTS_PATTERN, ALERTS_PATTERN = "moodwatch-results*", "moodwatch-alerts*"


def flatten(properties: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec:
            out[path] = spec.get("type", "object")
            out.update(flatten(spec["properties"], path + "."))
        else:
            out[path] = spec["type"]
    return out


RESULTS_FIELDS = flatten(results_template()["template"]["mappings"]["properties"])
ALERTS_FIELDS = flatten(alerts_template()["template"]["mappings"]["properties"])
NUMERIC = {"float", "long", "double", "integer"}
AGGREGATABLE = NUMERIC | {"keyword", "date", "boolean"}


def exported_metric_names() -> set[str]:
    """Every sample name the workers' metric objects export."""
    from workers.aggregator.alerts_out import AlertOutputMetrics
    from workers.aggregator.metrics import AggregatorMetrics
    from workers.analyzer.metrics import WorkerMetrics
    from workers.dashboard.server import DashboardMetrics

    registry = CollectorRegistry()
    WorkerMetrics.create(registry)
    agg = AggregatorMetrics.create(registry)
    AlertOutputMetrics.create(agg.registry)
    DashboardMetrics.create(registry)
    names = set()
    for family in registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


def lucene_fields(query: str) -> set[str]:
    return {m for m in re.findall(r"([A-Za-z_][\w.]*)\s*:", query or "")}


# --- Grafana ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grafana() -> dict:
    return json.loads(GRAFANA.read_text())


def test_grafana_top_level(grafana):
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "annotations", "time", "version"):
        assert key in grafana, key
    assert grafana["uid"] == "moodwatch" and isinstance(grafana["schemaVersion"], int)
    assert "Placeholder" not in grafana.get("description", "")
    variables = {v["name"]: v for v in grafana["templating"]["list"]}
    assert {"ds_results", "ds_alerts", "ds_prometheus", "channel"} <= set(variables)
    assert variables["ds_results"]["type"] == variables["ds_alerts"]["type"] == "datasource"
    assert variables["ds_prometheus"]["query"] == "prometheus"
    find = json.loads(variables["channel"]["query"])
    assert find["find"] == "terms" and RESULTS_FIELDS[find["field"]] == "keyword"


def panels_of(grafana) -> list[dict]:
    out = []
    for p in grafana["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_grafana_panels_on_grid_with_unique_ids(grafana):
    panels = panels_of(grafana)
    assert len(panels) >= 10
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    occupied: set[tuple[int, int]] = set()
    for p in panels:
        assert p["type"] in {"row", "timeseries", "table", "stat", "barchart", "gauge"}, p["type"]
        assert p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0 and g["y"] >= 0
        cells = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & occupied, f"panel {p['title']!r} overlaps another"
        occupied |= cells
        if p["type"] != "row":
            assert p["targets"], p["title"]


def _ds_uid(ds) -> str:
    return ds["uid"] if isinstance(ds, dict) else str(ds)


def test_grafana_elasticsearch_targets_name_existing_fields(grafana):
    es_targets = 0
    for p in panels_of(grafana):
        for t in p.get("targets", []):
            ds = t.get("datasource") or p.get("datasource")
            uid = _ds_uid(ds)
            if ds.get("type") != "elasticsearch":
                continue
            es_targets += 1
            fields = RESULTS_FIELDS if uid == "${ds_results}" else ALERTS_FIELDS if uid == "${ds_alerts}" else None
            assert fields is not None, f"unknown data source {uid} in {p['title']!r}"
            assert fields[t["timeField"]] == "date"
            for f in lucene_fields(t.get("query", "")):
                assert f in fields, f"{p['title']!r}: query field {f}"
            for m in t["metrics"]:
                if "field" in m:
                    assert fields.get(m["field"]) in NUMERIC, f"{p['title']!r}: metric field {m['field']}"
            for b in t["bucketAggs"]:
                assert fields.get(b["field"]) in AGGREGATABLE, f"{p['title']!r}: bucket field {b['field']}"
                if b["type"] == "date_histogram":
                    assert fields[b["field"]] == "date"
            if p["type"] == "table":
                organize = [tr for tr in p.get("transformations", []) if tr["id"] == "organize"]
                for name in organize[0]["options"]["includeByName"] if organize else []:
                    assert name in fields, f"{p['title']!r}: column {name}"
    assert es_targets >= 5
    emotion = next(p for p in panels_of(grafana) if p["title"] == "Emotion mix")
    assert {m["field"] for m in emotion["targets"][0]["metrics"]} == {f"emotions.{e}" for e in
            ("anger", "disgust", "sadness", "fear", "excitement", "awe", "contentment", "amusement")}  # fmt: skip
    assert emotion["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"


def test_grafana_annotations_and_prometheus_metrics(grafana):
    (ann,) = grafana["annotations"]["list"]
    assert _ds_uid(ann["datasource"]) == "${ds_alerts}"
    for key in ("timeField", "timeEndField", "textField", "tagsField"):
        assert ann[key] in ALERTS_FIELDS
    known = exported_metric_names()
    seen = 0
    for p in panels_of(grafana):
        for t in p.get("targets", []):
            if "expr" not in t:
                continue
            seen += 1
            assert _ds_uid(t["datasource"]) == "${ds_prometheus}"
            names = set(re.findall(r"\b(moodwatch_[a-z_]+)", t["expr"]))
            assert names <= known, f"{p['title']!r}: unknown metrics {names - known}"
    assert seen >= 8


# --- Kibana ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kibana() -> dict[tuple[str, str], dict]:
    objects = {}
    for n, line in enumerate(KIBANA.read_text().splitlines(), 1):
        assert line.strip(), f"blank line {n}"
        obj = json.loads(line)
        for key in ("id", "type", "attributes", "references"):
            assert key in obj, f"line {n} lacks {key}"
        assert (obj["type"], obj["id"]) not in objects
        objects[(obj["type"], obj["id"])] = obj
    return objects


def pattern_fields(kibana, pattern_id: str) -> dict[str, str]:
    title = kibana[("index-pattern", pattern_id)]["attributes"]["title"]
    return {RESULTS_PATTERN: RESULTS_FIELDS, ALERTS_PATTERN: ALERTS_FIELDS}[title]


def test_kibana_index_patterns_match_the_indices(kibana):
    patterns = {o["attributes"]["title"]: o for (t, _), o in kibana.items() if t == "index-pattern"}
    assert set(patterns) == {RESULTS_PATTERN, ALERTS_PATTERN}
    assert patterns[RESULTS_PATTERN]["attributes"]["timeFieldName"] == "created_at"
    assert patterns[ALERTS_PATTERN]["attributes"]["timeFieldName"] == "window_start"
    for o in patterns.values():
        fields = pattern_fields(kibana, o["id"])
        assert fields[o["attributes"]["timeFieldName"]] == "date"
        for field in json.loads(o["attributes"].get("fieldFormatMap", "{}")):
            assert field in fields


def test_kibana_references_resolve(kibana):
    for (t, i), o in kibana.items():
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in kibana, f"{t}/{i} -> {ref}"


def test_kibana_tsvb_visualisations_use_existing_fields(kibana):
    vis = {i: json.loads(o["attributes"]["visState"]) for (t, i), o in kibana.items() if t == "visualization"}
    assert {"moodwatch-negative-share", "moodwatch-emotion-mix"} <= set(vis)
    for vid, state in vis.items():
        params = state["params"]
        assert state["type"] == "metrics" and params["type"] == "timeseries"
        fields = pattern_fields(kibana, params["index_pattern"]["id"])
        assert fields[params["time_field"]] == "date"
        for s in params["series"]:
            if s["split_mode"] == "terms":
                assert fields[s["terms_field"]] == "keyword"
            for m in s["metrics"]:
                if "field" in m:
                    assert fields.get(m["field"]) in NUMERIC, (vid, m["field"])
                for side in ("numerator", "denominator"):
                    if side in m:
                        for f in lucene_fields(m[side]["query"]):
                            assert f in fields, (vid, f)
        for a in params.get("annotations", []):
            afields = pattern_fields(kibana, a["index_pattern"]["id"])
            assert afields[a["time_field"]] == "date"
            for f in a["fields"].split(","):
                assert f in afields
    share = vis["moodwatch-negative-share"]["params"]
    assert share["series"][0]["metrics"][0]["type"] == "filter_ratio"
    assert share["annotations"], "alert markers"
    assert all(s["stacked"] == "stacked" for s in vis["moodwatch-emotion-mix"]["params"]["series"])
    assert len(vis["moodwatch-emotion-mix"]["params"]["series"]) == 8


def test_kibana_saved_searches_and_dashboard(kibana):
    searches = {i: o for (t, i), o in kibana.items() if t == "search"}
    assert {"moodwatch-latest-alerts", "moodwatch-negative-posts"} <= set(searches)
    for sid, o in searches.items():
        (ref,) = o["references"]
        fields = pattern_fields(kibana, ref["id"])
        source = json.loads(o["attributes"]["kibanaSavedObjectMeta"]["searchSourceJSON"])
        assert source["indexRefName"] == ref["name"]
        for f in lucene_fields(source["query"]["query"]):
            assert f in fields
        for col in o["attributes"]["columns"]:
            assert col in fields, (sid, col)
        for field, _order in o["attributes"]["sort"]:
            assert fields[field] == "date"
    (dash,) = [o for (t, _), o in kibana.items() if t == "dashboard"]
    panels = json.loads(dash["attributes"]["panelsJSON"])
    refs = {r["name"]: r for r in dash["references"]}
    assert len(panels) == 4 and {p["panelRefName"] for p in panels} == set(refs)
    for p in panels:
        g = p["gridData"]
        assert g["x"] + g["w"] <= 48 and g["i"] == p["panelIndex"]
        assert refs[p["panelRefName"]]["type"] == p["type"]
