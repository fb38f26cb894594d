"""helm/moodwatch rendered by Helm's own renderer and validated against the Kubernetes schemas.

Renderer: the Helm v4 Go SDK in the helm-python-sdk wheel (libhelm_c.so, called through ctypes; no
helm binary, no cluster, no network). Schemas: the kubernetes-validate package (strict: unknown
fields are errors). The chart's CRD objects (KEDA, prometheus-operator) are not in the core
schemas; they are checked against structural schemas written here.

Install: `pip install helm-python-sdk kubernetes-validate` (in the project's test extra).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

helm = pytest.importorskip(
    "helm_python",
    reason="Helm renderer absent: `pip install helm-python-sdk` (make test installs it with the test extra)",
)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate",
    reason="Kubernetes schemas absent: `pip install kubernetes-validate` (make test installs it with the test extra)",
)
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "moodwatch"
PRODUCTION = CHART / "values-production.yaml"
RELEASE, NAMESPACE = "moodwatch", "moderation"
# oldest version the chart supports (Chart.yaml kubeVersion) and the newest the package knows
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
WORKERS = ("analyzer", "aggregator", "dashboard")
SECRET_ENV = re.compile(r"(PASSWORD|API_KEY|SECRET|SECRET_KEY|TOKEN|_USERS)$")

pytestmark = pytest.mark.timeout(300)


# ------------------------------------------------------------------------------------ rendering
@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def production_values() -> dict:
    return yaml.safe_load(PRODUCTION.read_text())


def render(chart, values: dict | None = None, name: str = RELEASE) -> list[dict]:
    """All manifests the chart renders, as dicts, in template order."""
    out = chart.render(values=values, name=name, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                docs.append(doc)
    return docs


def render_text(chart, values: dict | None = None) -> str:
    return "\n".join(chart.render(values=values, name=RELEASE, namespace=NAMESPACE).values())


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in by_kind(docs, kind)]}"
    return found[0]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] == "Deployment"]


def render_error(chart, values: dict) -> str:
    with pytest.raises(helm.HelmError) as info:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return str(info.value)


@pytest.fixture(scope="module")
def default_docs(chart):
    return render(chart)


@pytest.fixture(scope="module")
def production_docs(chart):
    return render(chart, production_values())


@pytest.fixture(params=["default", "production"])
def docs(request, default_docs, production_docs):
    return default_docs if request.param == "default" else production_docs


# ------------------------------------------------------------------ structural schemas for CRDs
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
    },
}
_DURATION = {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$"}


def _crd(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS = {
    "ScaledObject": _crd(
        "keda.sh/v1alpha1",
        "ScaledObject",
        {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string", "minLength": 1},
                    },
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            # KEDA trigger metadata is map[string]string: numbers must be quoted
                            "metadata": _STR_MAP,
                            "authenticationRef": {
                                "type": "object",
                                "required": ["name"],
                                "additionalProperties": False,
                                "properties": {"name": {"type": "string"}, "kind": {"type": "string"}},
                            },
                        },
                    },
                },
            },
        },
    ),
    "TriggerAuthentication": _crd(
        "keda.sh/v1alpha1",
        "TriggerAuthentication",
        {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name", "key"],
                        "additionalProperties": False,
                        "properties": {k: {"type": "string", "minLength": 1} for k in ("parameter", "name", "key")},
                    },
                },
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["parameter", "name"],
                        "additionalProperties": False,
                        "properties": {
                            k: {"type": "string", "minLength": 1} for k in ("parameter", "name", "containerName")
                        },
                    },
                },
            },
        },
    ),
    "ServiceMonitor": _crd(
        "monitoring.coreos.com/v1",
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _STR_MAP},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                        "any": {"type": "boolean"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": _crd(
        "monitoring.coreos.com/v1",
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
                                        "record": {"type": "string", "pattern": "^[a-zA-Z_:][a-zA-Z0-9_:]*$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": _STR_MAP,
                                        "annotations": _STR_MAP,
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
}


def validate_manifest(doc: dict) -> None:
    kind = doc["kind"]
    if kind in CRD_SCHEMAS:
        jsonschema.Draft7Validator(CRD_SCHEMAS[kind]).validate(doc)
        return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


# ----------------------------------------------------------------------------------- the tests
def test_helm_lint_passes(chart):
    for values in (None, production_values()):
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_values_files_match_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    validator.validate(defaults)
    merged = copy.deepcopy(defaults)
    _deep_merge(merged, production_values())
    validator.validate(merged)


def test_schema_rejects_bad_values(chart):
    assert "additional properties" in render_error(chart, {"analyzr": {}})
    assert "want integer" in render_error(chart, {"analyzer": {"replicas": "two"}})
    assert "runAsNonRoot" in render_error(chart, {"workers": {"securityContext": {"runAsNonRoot": False}}})
    assert "/triton/modelRepository/source" in render_error(chart, {"triton": {"modelRepository": {"source": "s3"}}})
    # null removes a default: a container without limits is refused
    err = render_error(chart, {"analyzer": {"resources": {"limits": None}}})
    assert "/analyzer/resources" in err and "limits" in err


@pytest.mark.parametrize("which", ["default", "production"])
def test_every_manifest_is_valid(which, default_docs, production_docs):
    docs = default_docs if which == "default" else production_docs
    assert docs
    for doc in docs:
        try:
            validate_manifest(doc)
        except Exception as exc:  # noqa: BLE001 - name the manifest in the failure
            pytest.fail(f"{doc['kind']}/{doc['metadata'].get('name')} ({which}): {exc}")


def test_default_render_contents(default_docs):
    kinds = sorted({d["kind"] for d in default_docs})
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    names = {d["metadata"]["name"] for d in by_kind(default_docs, "Deployment")}
    assert names == {f"{RELEASE}-{c}" for c in (*WORKERS, "triton")}
    assert {d["metadata"]["name"] for d in by_kind(default_docs, "PodDisruptionBudget")} == names
    # optional objects stay off by default (they need KEDA / prometheus-operator CRDs)
    assert not by_kind(default_docs, "ScaledObject")
    assert not by_kind(default_docs, "ServiceMonitor")
    assert not by_kind(default_docs, "Secret")


def test_production_render_contents(production_docs):
    counts = {}
    for d in production_docs:
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    assert counts["Deployment"] == 4
    assert counts["ScaledObject"] == 1
    assert counts["TriggerAuthentication"] == 1
    assert counts["HorizontalPodAutoscaler"] == 1
    assert counts["ServiceMonitor"] == 2
    assert counts["PrometheusRule"] == 1
    assert counts["Ingress"] == 1
    assert "Secret" not in counts


def test_every_container_has_probes_resources_and_security_context(docs):
    for deployment, spec in pod_specs(docs):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, deployment
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", deployment
        assert spec.get("automountServiceAccountToken") is False, deployment
        containers = spec["containers"]
        for c in containers + spec.get("initContainers", []):
            where = f"{deployment}/{c['name']}"
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(section, {})), f"{where}: resources.{section}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        for c in containers:
            where = f"{deployment}/{c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert probe in c, f"{where}: {probe}"
                port = c[probe]["httpGet"]["port"]
                assert port in ports, f"{where}: {probe} uses port {port!r} the container does not name"
            # read-only root: a writable /tmp is mounted
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, where
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], where


def test_worker_containers(docs):
    for component in WORKERS:
        dep = one(docs, "Deployment", f"{RELEASE}-{component}")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        assert c["command"] == ["moodwatch", component]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == 9464
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert c["envFrom"] == [{"configMapRef": {"name": f"{RELEASE}-settings"}}]
        sc = c["securityContext"]
        assert sc["runAsUser"] == 10001
        if component == "dashboard":
            assert "http" in ports
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["MOODWATCH_DASHBOARD_HOST"] == "0.0.0.0"
            assert env["MOODWATCH_DASHBOARD_PORT"] == str(ports["http"])


def test_settings_configmap(chart, default_docs):
    cm = one(default_docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    for key, value in defaults.items():
        assert cm[key] == str(value)
    assert all(isinstance(v, str) for v in cm.values())
    assert cm["MOODWATCH_METRICS_HOST"] == "0.0.0.0"  # probes reach it from the kubelet
    assert cm["MOODWATCH_METRICS_PORT"] == "9464"
    assert cm["MOODWATCH_TRITON_URL"] == f"{RELEASE}-triton:8001"
    assert one(default_docs, "Service", f"{RELEASE}-triton")["spec"]["ports"][1] == {
        "name": "grpc",
        "port": 8001,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    }
    # integers arrive from YAML as floats inside Helm: no exponent notation on the way out; null drops
    docs = render(
        chart,
        {
            "settings": {
                "MOODWATCH_IMAGE_MAX_BYTES": 10485760,
                "MOODWATCH_ES_REQUEST_TIMEOUT_S": 2.5,
                "MOODWATCH_REGIONS_ENABLED": False,
                "MOODWATCH_LOG_JSON": None,
            }
        },
    )
    cm2 = one(docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    assert cm2["MOODWATCH_IMAGE_MAX_BYTES"] == "10485760"
    assert cm2["MOODWATCH_ES_REQUEST_TIMEOUT_S"] == "2.5"
    assert cm2["MOODWATCH_REGIONS_ENABLED"] == "false"
    assert "MOODWATCH_LOG_JSON" not in cm2

    # a settings change rolls the worker pods
    def checksum(d):
        dep = one(d, "Deployment", f"{RELEASE}-analyzer")
        return dep["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]

    assert checksum(docs) != checksum(default_docs)


def test_chart_managed_settings_are_refused(chart):
    err = render_error(chart, {"settings": {"MOODWATCH_METRICS_HOST": "127.0.0.1"}})
    assert "MOODWATCH_METRICS_HOST" in err


def test_secrets_are_referenced_never_inlined(chart, production_docs):
    text = render_text(chart, production_values())
    assert "kind: Secret\n" not in text
    refs = {}
    for deployment, spec in pod_specs(production_docs):
        for c in spec["containers"]:
            for e in c.get("env", []):
                if SECRET_ENV.search(e["name"]):
                    assert "value" not in e, f"{deployment}: {e['name']} inlined"
                    ref = e["valueFrom"]["secretKeyRef"]
                    refs.setdefault(e["name"], set()).add(c["name"])
                    assert ref["name"] and ref["key"]
    assert refs == {
        "MOODWATCH_ES_API_KEY": {"analyzer", "aggregator", "dashboard"},
        "MOODWATCH_KAFKA_SASL_PASSWORD": {"analyzer", "aggregator"},
        "MOODWATCH_ALERT_WEBHOOK_SECRET": {"aggregator"},  # least privilege: only the signer
        "MOODWATCH_DASHBOARD_SECRET_KEY": {"dashboard"},
    }
    # KEDA reads the same Secret through a TriggerAuthentication
    (auth,) = by_kind(production_docs, "TriggerAuthentication")
    assert {"parameter": "password", "name": "moodwatch-kafka", "key": "password"} in auth["spec"]["secretTargetRef"]


@pytest.mark.parametrize(
    "values",
    [
        {"settings": {"MOODWATCH_ES_PASSWORD": "s3cr3t-sentinel-value"}},
        {"settings": {"MOODWATCH_KAFKA_SASL_PASSWORD": "s3cr3t-sentinel-value"}},
        {"settings": {"MOODWATCH_ES_API_KEY": "s3cr3t-sentinel-value"}},
        {"settings": {"MOODWATCH_ALERT_WEBHOOK_SECRET": "s3cr3t-sentinel-value"}},
        {"analyzer": {"env": {"MOODWATCH_ES_PASSWORD": "s3cr3t-sentinel-value"}}},
        {"settings": {"MOODWATCH_DASHBOARD_SECRET_KEY": "s3cr3t-sentinel-value"}},
        {"dashboard": {"env": {"MOODWATCH_DASHBOARD_USERS": "ann:admin:s3cr3t-sentinel-value"}}},
    ],
)
def test_inlined_secret_values_fail_the_render(chart, values):
    err = render_error(chart, values)
    assert "s3cr3t-sentinel-value" not in err


def test_secret_guard_in_templates_without_schema(chart):
    """The templates refuse secrets even when schema validation is bypassed (--skip-schema-validation)."""
    tpl = (CHART / "templates" / "_helpers.tpl").read_text()
    assert "looks like a secret" in tpl
    # the schema and the template guard agree on the pattern
    schema = json.loads((CHART / "values.schema.json").read_text())
    pattern = schema["properties"]["settings"]["propertyNames"]["not"]["anyOf"][0]["pattern"]
    assert pattern == SECRET_ENV.pattern
    assert f'regexMatch "{SECRET_ENV.pattern}"' in tpl


def test_tls_ca_secrets_are_mounted(production_docs):
    cm = one(production_docs, "ConfigMap", f"{RELEASE}-settings")["data"]
    assert cm["MOODWATCH_KAFKA_SSL_CAFILE"] == "/etc/moodwatch/tls/kafka/ca.crt"
    assert cm["MOODWATCH_ES_CA_CERTS"] == "/etc/moodwatch/tls/elasticsearch/ca.crt"
    spec = one(production_docs, "Deployment", f"{RELEASE}-analyzer")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["kafka-ca"]["secret"]["secretName"] == "moodwatch-kafka-ca"
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/etc/moodwatch/tls/kafka"]["readOnly"] is True


def test_services_have_named_ports_that_reach_pods(docs):
    pods = {}
    for d in by_kind(docs, "Deployment"):
        labels = d["spec"]["template"]["metadata"]["labels"]
        ports = {p["name"] for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        pods[d["metadata"]["name"]] = (labels, ports)
    for svc in by_kind(docs, "Service"):
        selector = svc["spec"]["selector"]
        matches = [n for n, (labels, _) in pods.items() if selector.items() <= labels.items()]
        assert len(matches) == 1, f"Service {svc['metadata']['name']} selects {matches}"
        _, container_ports = pods[matches[0]]
        for port in svc["spec"]["ports"]:
            assert port["name"] in ("http", "grpc", "metrics")
            assert port["targetPort"] in container_ports
    triton = one(docs, "Service", f"{RELEASE}-triton")
    assert [p["name"] for p in triton["spec"]["ports"]] == ["http", "grpc", "metrics"]
    dashboard = one(docs, "Service", f"{RELEASE}-dashboard")
    assert [p["name"] for p in dashboard["spec"]["ports"]] == ["http", "metrics"]
    # PDBs select the pods of their Deployment
    for pdb in by_kind(docs, "PodDisruptionBudget"):
        labels, _ = pods[pdb["metadata"]["name"]]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_triton_deployment(default_docs):
    dep = one(default_docs, "Deployment", f"{RELEASE}-triton")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:[0-9]{2}\.[0-9]{2}-py3", c["image"])
    assert c["command"] == ["tritonserver"]
    assert "--model-repository=/models" in c["args"]
    assert "--strict-model-config=false" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, (
        "startup probe must allow 10 min of model loading"
    )
    # model repository: copied from the worker image by an init container into an emptyDir
    (init,) = spec["initContainers"]
    worker = one(default_docs, "Deployment", f"{RELEASE}-analyzer")["spec"]["template"]["spec"]["containers"][0]
    assert init["image"] == worker["image"]
    assert init["command"][-2:] == ["/opt/moodwatch/triton_repo", "/models"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes["models"]
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"


def test_triton_model_repository_from_a_claim(chart):
    docs = render(chart, {"triton": {"modelRepository": {"source": "existingClaim", "existingClaim": "triton-models"}}})
    spec = one(docs, "Deployment", f"{RELEASE}-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in spec
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "triton-models", "readOnly": True}
    assert "existingClaim is empty" in render_error(chart, {"triton": {"modelRepository": {"source": "existingClaim"}}})


def test_keda_scaled_object(production_docs):
    values = production_values()
    (so,) = by_kind(production_docs, "ScaledObject")
    spec = so["spec"]
    assert spec["scaleTargetRef"]["name"] == f"{RELEASE}-analyzer"
    assert spec["maxReplicaCount"] == values["analyzer"]["autoscaling"]["keda"]["maxReplicaCount"]
    assert spec["maxReplicaCount"] <= values["kafka"]["postsTopicPartitions"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    md = trigger["metadata"]
    settings = values["settings"]
    assert md["bootstrapServers"] == settings["MOODWATCH_KAFKA_BOOTSTRAP"]
    assert md["consumerGroup"] == settings["MOODWATCH_CONSUMER_GROUP"]
    assert md["topic"] == settings["MOODWATCH_POSTS_TOPIC"]
    assert md["lagThreshold"] == "2000"
    assert md["sasl"] == "scram_sha512" and md["tls"] == "enable"
    assert trigger["authenticationRef"]["name"] == f"{RELEASE}-analyzer"
    # KEDA owns the replica count
    assert "replicas" not in one(production_docs, "Deployment", f"{RELEASE}-analyzer")["spec"]


def test_keda_defaults_follow_the_settings(chart):
    docs = render(chart, {"analyzer": {"autoscaling": {"keda": {"enabled": True}}}})
    (so,) = by_kind(docs, "ScaledObject")
    md = so["spec"]["triggers"][0]["metadata"]
    assert (md["bootstrapServers"], md["consumerGroup"], md["topic"]) == ("kafka:9092", "moodwatch-analyzer", "posts")
    assert "authenticationRef" not in so["spec"]["triggers"][0]  # PLAINTEXT: nothing to authenticate
    assert not by_kind(docs, "TriggerAuthentication")


def test_keda_max_replicas_beyond_partitions_fails(chart):
    err = render_error(
        chart,
        {
            "kafka": {"postsTopicPartitions": 6},
            "analyzer": {"autoscaling": {"keda": {"enabled": True, "maxReplicaCount": 7}}},
        },
    )
    assert "maxReplicaCount (7) exceeds kafka.postsTopicPartitions (6)" in err
    # equal is fine
    render(
        chart,
        {
            "kafka": {"postsTopicPartitions": 6},
            "analyzer": {"autoscaling": {"keda": {"enabled": True, "maxReplicaCount": 6}}},
        },
    )
    # without KEDA the fixed replica count is bounded the same way
    assert "analyzer.replicas (7) exceeds" in render_error(
        chart, {"kafka": {"postsTopicPartitions": 6}, "analyzer": {"replicas": 7}}
    )
    # and min above max is refused
    assert "minReplicaCount (5) exceeds maxReplicaCount (4)" in render_error(
        chart, {"analyzer": {"autoscaling": {"keda": {"enabled": True, "minReplicaCount": 5, "maxReplicaCount": 4}}}}
    )


def test_triton_hpa_on_queue_time(production_docs):
    (hpa,) = by_kind(production_docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == f"{RELEASE}-triton"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "triton_queue_duration_us_per_request"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert "replicas" not in one(production_docs, "Deployment", f"{RELEASE}-triton")["spec"]
    adapter = yaml.safe_load((CHART / "files" / "prometheus-adapter-rules.yaml").read_text())
    assert adapter[0]["name"]["as"] == metric["pods"]["metric"]["name"]
    assert "nv_inference_queue_duration_us" in adapter[0]["metricsQuery"]


def test_service_monitors_pin_the_job_label_the_rules_use(production_docs):
    rules_text = (CHART / "files" / "prometheus-rules.yaml").read_text()
    services = {s["metadata"]["name"]: s for s in by_kind(production_docs, "Service")}
    for sm in by_kind(production_docs, "ServiceMonitor"):
        assert sm["spec"]["jobLabel"] == "moodwatch.io/job"
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        selected = [
            s
            for s in services.values()
            if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert selected
        for svc in selected:
            job = svc["metadata"]["labels"]["moodwatch.io/job"]
            assert job.startswith("moodwatch-")
            assert "metrics" in [p["name"] for p in svc["spec"]["ports"]]
    assert 'job="moodwatch-triton"' in rules_text and "moodwatch-(analyzer|aggregator|dashboard)" in rules_text


def test_prometheus_rule_embeds_the_rule_file(production_docs):
    (rule,) = by_kind(production_docs, "PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"]["groups"] == source["groups"]


def test_dashboard_configmaps(default_docs):
    grafana = one(default_docs, "ConfigMap", f"{RELEASE}-grafana-dashboard")
    assert grafana["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = grafana["data"].values()
    assert json.loads(content) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    kibana = one(default_docs, "ConfigMap", f"{RELEASE}-kibana-saved-objects")
    (ndjson,) = kibana["data"].values()
    assert ndjson.strip() == (CHART / "files" / "kibana-saved-objects.ndjson").read_text().strip()
    for line in ndjson.splitlines():
        if line.strip():
            obj = json.loads(line)
            assert {"type", "id", "attributes"} <= set(obj)


def test_long_release_names_stay_valid_dns_labels(chart):
    docs = render(chart, production_values(), name="r" * 53)
    for d in docs:
        name = d["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_components_can_be_turned_off(chart):
    docs = render(
        chart,
        {
            "dashboard": {"enabled": False},
            "triton": {"enabled": False},
            "settings": {"MOODWATCH_TRITON_URL": "triton.shared:8001"},
        },
    )
    names = {d["metadata"]["name"] for d in by_kind(docs, "Deployment")}
    assert names == {f"{RELEASE}-analyzer", f"{RELEASE}-aggregator"}
    assert one(docs, "ConfigMap", f"{RELEASE}-settings")["data"]["MOODWATCH_TRITON_URL"] == "triton.shared:8001"
    for doc in docs:
        validate_manifest(doc)


def _deep_merge(base: dict, override: dict) -> None:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


# ------------------------------------------------------------------------------------ dashboard
def dashboard_env(docs: list[dict]) -> dict[str, dict]:
    (spec,) = [spec for name, spec in pod_specs(docs) if name.endswith("dashboard")]
    return {e["name"]: e for e in spec["containers"][0]["env"]}


def test_dashboard_is_exposed_the_safe_way_by_default(default_docs):
    env = dashboard_env(default_docs)
    hosts = env["MOODWATCH_DASHBOARD_ALLOWED_HOSTS"]["value"].split(",")
    assert hosts == ["moodwatch-dashboard", "moodwatch-dashboard.moderation.svc", "localhost", "127.0.0.1"]
    assert not any(name.startswith("MOODWATCH_DASHBOARD_AUTH_PROXY") for name in env), "auth proxy off by default"
    assert "MOODWATCH_DASHBOARD_COOKIE_SECURE" not in env, "cookies stay Secure (the setting's default)"
    assert not by_kind(default_docs, "Ingress")


def test_dashboard_behind_an_oidc_ingress(production_docs):
    env = dashboard_env(production_docs)
    assert env["MOODWATCH_DASHBOARD_ALLOWED_HOSTS"]["value"].split(",")[0] == "moodwatch.example.com"
    assert env["MOODWATCH_DASHBOARD_AUTH_PROXY_USER_HEADER"]["value"] == "X-Auth-Request-Email"
    assert env["MOODWATCH_DASHBOARD_AUTH_PROXY_IPS"]["value"] == "10.64.0.0/14"
    assert env["MOODWATCH_DASHBOARD_REVIEWER_GROUPS"]["value"] == "trust-and-safety"
    key = env["MOODWATCH_DASHBOARD_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert key == {"name": "moodwatch-dashboard", "key": "secret-key"}
    (ingress,) = by_kind(production_docs, "Ingress")
    assert ingress["spec"]["tls"] and "auth-response-headers" in str(ingress["metadata"]["annotations"])


def test_dashboard_auth_proxy_needs_trusted_addresses(chart):
    err = render_error(chart, {"dashboard": {"authProxy": {"enabled": True}}})
    assert "trustedCIDRs" in err
    explicit = render(chart, {"dashboard": {"allowedHosts": ["mood.internal"]}})
    assert dashboard_env(explicit)["MOODWATCH_DASHBOARD_ALLOWED_HOSTS"]["value"] == "mood.internal"
