"""Secrets: only from settings, passed through to the clients, never in logs, metrics or error messages.

Unit level: `Settings` / `AggregatorSettings` repr, str, model_dump_json; the kwargs kafka-python
(consumer, producer, admin) and elasticsearch-py receive from `make_consumer` / `make_producer` /
`ensure_topics` / `make_es_client` (TLS CA file, SASL mechanism / user / password, basic auth, API
key); structlog output of building the clients; signed / user-info image URLs in refusal messages;
the alert webhook's errors and logs.
Integration: the real worker (subprocess, DEBUG logs, kafka-python at DEBUG too) with Elasticsearch
basic auth against noida-db and a SASL password set: its whole log, /metrics and /readyz, and the DLQ
messages of posts with signed image URLs never contain a secret; a worker whose store answers 401
receives the API key on the wire (the stub checks the Authorization header) and dies without
printing it.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.reliability.verify import all_committed, produce, read_topic, wait_until
from workers.analyzer.settings import AnalyzerSettings as Settings

# Values that cannot reach anything; what must never be printed.
ES_PASSWORD = "es-pw-7f3a9c1e-NEVER-LOG"
ES_API_KEY = "es-apikey-51bd02aa-NEVER-LOG"
SASL_PASSWORD = "sasl-pw-c0ffee42-NEVER-LOG"
WEBHOOK_SECRET = "hook-secret-9d9d9d-NEVER-LOG"
URL_TOKEN = "sig-0a1b2c3d4e-NEVER-LOG"
SECRETS = (ES_PASSWORD, ES_API_KEY, SASL_PASSWORD, WEBHOOK_SECRET, URL_TOKEN)


def leaked(text: str) -> list[str]:
    found = [s for s in SECRETS if s in text]
    # base64 forms (an Authorization header printed by a debug log would carry these)
    for s in (ES_PASSWORD, SASL_PASSWORD):
        for user in ("elastic", "svc-moodwatch"):
            if base64.b64encode(f"{user}:{s}".encode()).decode() in text:
                found.append(f"base64({user}:{s})")
    return found


def secret_settings(**kw) -> Settings:
    values = dict(
        es_username="elastic",
        es_password=ES_PASSWORD,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc-moodwatch",
        kafka_sasl_password=SASL_PASSWORD,
        kafka_ssl_cafile=Path("/etc/ssl/kafka-ca.pem"),
        es_ca_certs=Path("/etc/ssl/es-ca.pem"),
        metrics_port=0,
    )
    values.update(kw)
    return Settings(**values)


@pytest.fixture(autouse=True)
def isolated_logging():
    """configure_logging() points the root logger at pytest's captured stderr; put things back so
    background client threads of later tests do not log into a closed stream."""
    import logging

    import structlog

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("kafka", "elastic_transport", "urllib3", "httpx")}
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.configure(**config)


@pytest.fixture
def figures_secrets(figures):
    figures.setdefault("secret_checks", 0)
    return figures


def test_settings_never_render_secrets(figures_secrets, monkeypatch):
    monkeypatch.setenv("MOODWATCH_ES_PASSWORD", ES_PASSWORD)
    monkeypatch.setenv("MOODWATCH_ES_API_KEY", ES_API_KEY)
    monkeypatch.setenv("MOODWATCH_KAFKA_SASL_PASSWORD", SASL_PASSWORD)
    from_env = Settings()
    assert from_env.es_password.get_secret_value() == ES_PASSWORD  # read from the environment
    from workers.aggregator.settings import AggregatorSettings

    agg = AggregatorSettings(alert_webhook_secret=WEBHOOK_SECRET, alert_webhook_url="https://hooks.example.com/x")
    renders = {
        "repr": repr(from_env),
        "str": str(from_env),
        "dump_json": from_env.model_dump_json(),
        "dump": repr(from_env.model_dump()),
        "agg_repr": repr(agg),
        "agg_json": agg.model_dump_json(),
        "fstring": f"{from_env}",
    }
    for name, text in renders.items():
        assert not leaked(text), f"{name} leaks {leaked(text)}"
    figures_secrets["secret_checks"] += len(renders)


class Recorder:
    """Stands in for a client class: records the keyword arguments it was built with."""

    calls: list[dict] = []

    def __init__(self, *args, **kwargs):
        Recorder.calls.append({"args": args, **kwargs})

    def __getattr__(self, name):
        return lambda *a, **k: []

    def close(self, *a, **k):
        pass


def test_tls_and_sasl_reach_kafka_python(monkeypatch, figures_secrets):
    from workers.adapters import kafka_io

    Recorder.calls = []
    for name in ("KafkaConsumer", "KafkaProducer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka_io, name, Recorder)
    s = secret_settings()
    kafka_io.make_consumer(s, group_id="g", client_id="c")
    kafka_io.make_producer(s)
    kafka_io.ensure_topics(s, ["posts"])
    assert len(Recorder.calls) == 3
    for call in Recorder.calls:
        assert call["security_protocol"] == "SASL_SSL"
        assert call["ssl_cafile"] == "/etc/ssl/kafka-ca.pem"
        assert call["sasl_mechanism"] == "SCRAM-SHA-512"
        assert call["sasl_plain_username"] == "svc-moodwatch"
        assert call["sasl_plain_password"] == SASL_PASSWORD  # unwrapped only here, for the client
    # and without SASL: nothing SASL-ish is passed, TLS alone still is
    Recorder.calls = []
    kafka_io.make_consumer(
        Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=Path("/ca.pem"), metrics_port=0),
        group_id="g",
        client_id="c",
    )
    (call,) = Recorder.calls
    assert call["security_protocol"] == "SSL" and call["ssl_cafile"] == "/ca.pem"
    assert not any(k.startswith("sasl") for k in call)
    figures_secrets["secret_checks"] += 4


def test_tls_auth_and_api_key_reach_elasticsearch(monkeypatch, capsys, figures_secrets):
    from workers.adapters import elastic as es_sink
    from workers.common.logs import configure_logging

    configure_logging("DEBUG", json=True)
    Recorder.calls = []
    monkeypatch.setattr(es_sink, "Elasticsearch", Recorder)
    es_sink.make_es_client(secret_settings(es_url="https://elastic:inline-pw@es.internal:9200"))
    es_sink.make_es_client(secret_settings(es_api_key=ES_API_KEY))
    basic, api = Recorder.calls
    assert basic["basic_auth"] == ("elastic", ES_PASSWORD) and basic["ca_certs"] == "/etc/ssl/es-ca.pem"
    assert api["api_key"] == ES_API_KEY and "basic_auth" not in api  # the API key wins over basic auth
    out = capsys.readouterr()
    logged = out.out + out.err
    assert "es_client" in logged and '"https://es.internal:9200/"' in logged  # the URL's user info is dropped
    assert "inline-pw" not in logged and not leaked(logged), leaked(logged)
    figures_secrets["secret_checks"] += 3


def test_image_url_tokens_and_user_info_stay_out_of_refusals(capsys, figures_secrets):
    from schemas.posts import ImageRef
    from workers.adapters.images import ImageLoader
    from workers.common.logs import configure_logging

    configure_logging("DEBUG", json=True)
    loader = ImageLoader(Settings(image_fetch_timeout_s=1.0, metrics_port=0))
    try:
        urls = [
            f"http://127.0.0.1:9/a.png?X-Amz-Signature={URL_TOKEN}",  # loopback: refused
            f"https://user:{URL_TOKEN}@images.example.com/a.png",  # user info: refused
            f"http://169.254.169.254/latest/meta-data/?token={URL_TOKEN}",
            f"ftp://cdn.example.com/{URL_TOKEN[:3]}a.png?k={URL_TOKEN}",
        ]
        results = loader.load_many([ImageRef(url=u) for u in urls])
    finally:
        loader.close()
    for url, result in zip(urls, results):
        assert not leaked(str(result)), f"{url}: {result}"
    out = capsys.readouterr()
    logged = out.out + out.err
    assert logged.count('"image refused"') == len(urls), logged  # every refusal is logged, and only redacted
    assert not leaked(logged), leaked(logged)
    figures_secrets["secret_checks"] += len(urls)


def test_alert_webhook_failures_do_not_print_the_secret(capsys, caplog, figures_secrets):
    from tests.factories import make_alert
    from workers.aggregator.alerts_out import WebhookError, WebhookSender
    from workers.common.logs import configure_logging
    from workers.devstack.servers import free_port

    configure_logging("DEBUG", json=True)
    sender = WebhookSender(
        f"http://127.0.0.1:{free_port()}/hooks/{URL_TOKEN}",
        WEBHOOK_SECRET,
        timeout_s=0.5,
        max_attempts=2,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )
    headers = sender.headers(make_alert(), b"{}")
    assert WEBHOOK_SECRET not in json.dumps(headers)  # an HMAC, not the key
    with caplog.at_level("DEBUG"), pytest.raises(WebhookError) as info:
        sender.send(make_alert())
    sender.close()
    out = capsys.readouterr()
    text = str(info.value) + out.out + out.err + caplog.text
    assert WEBHOOK_SECRET not in text and WEBHOOK_SECRET not in repr(sender)
    figures_secrets["secret_checks"] += 3
    # The webhook URL is a plain setting and is printed in WebhookSender's repr: a URL whose path is
    # the credential (Slack / Teams style) would show there. Recorded, not failed (see the report).
    figures_secrets["webhook_url_token_in_repr"] = URL_TOKEN in repr(sender)
    figures_secrets["webhook_url_token_in_errors_or_logs"] = URL_TOKEN in text


def test_kafka_python_debug_output_stays_capped(capsys, figures_secrets):
    """kafka-python's KafkaAdminClient logs its whole configuration, SASL password included, at DEBUG
    (kafka/admin/client.py: "Starting KafkaAdminClient with configuration: %s"). configure_logging caps
    the 'kafka' loggers at WARNING even when MOODWATCH_LOG_LEVEL=DEBUG; this pins that cap."""
    import inspect
    import logging

    from kafka import KafkaAdminClient

    from workers.common.logs import configure_logging

    source = inspect.getsource(KafkaAdminClient.__init__)
    prints_config = "Starting KafkaAdminClient with configuration" in source
    figures_secrets["kafka_admin_client_logs_its_config_at_debug"] = prints_config

    def emit() -> str:  # exactly what kafka-python does, without a network round trip
        logging.getLogger("kafka.admin.client").debug(
            "Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": SASL_PASSWORD}
        )
        out = capsys.readouterr()
        return out.out + out.err

    configure_logging("DEBUG", json=True)
    assert logging.getLogger("kafka").getEffectiveLevel() >= logging.WARNING
    assert SASL_PASSWORD not in emit()
    logging.getLogger("kafka").setLevel(logging.DEBUG)  # what an operator might do by hand
    figures_secrets["sasl_password_printed_if_kafka_logger_set_to_debug"] = SASL_PASSWORD in emit()
    figures_secrets["secret_checks"] += 1


# ---- the real worker ----------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_worker_with_credentials_never_logs_them(local_stack, make_settings, worker_env, figures_secrets):
    settings = make_settings(
        local_stack,
        es_username="elastic",
        es_password=ES_PASSWORD,
        kafka_sasl_password=SASL_PASSWORD,
        log_level="DEBUG",
    )
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40).decode()
    from tests.factories import tiny_png_b64

    good = tiny_png_b64(8, 8)
    posts = [
        (
            f"s-{i}",
            json.dumps(
                {
                    "schema_version": 1,
                    "post_id": f"s-{i}",
                    "author_id": "a",
                    "channel": "c",
                    "created_at": "2026-11-01T12:00:00Z",
                    "image": {"b64": good},
                }
            ).encode(),
        )
        for i in range(40)
    ]
    signed = [
        (
            f"s-url-{i}",
            json.dumps(
                {
                    "schema_version": 1,
                    "post_id": f"s-url-{i}",
                    "author_id": "a",
                    "channel": "c",
                    "created_at": "2026-11-01T12:00:00Z",
                    "image": {"url": u},
                }
            ).encode(),
        )
        for i, u in enumerate(
            [
                f"http://127.0.0.1:9/x.png?X-Amz-Signature={URL_TOKEN}",
                f"https://u:{URL_TOKEN}@cdn.example.com/x.png",
                f"http://10.0.0.1/x.png?token={URL_TOKEN}",
            ]
        )
    ]
    broken = [
        (
            "s-bad",
            json.dumps(
                {
                    "schema_version": 1,
                    "post_id": "s-bad",
                    "author_id": "a",
                    "channel": "c",
                    "created_at": "2026-11-01T12:00:00Z",
                    "image": {"b64": image},
                }
            ).encode(),
        )
    ]
    worker = worker_env(settings).start()
    ends, _ = produce(settings.kafka_bootstrap, settings.posts_topic, posts + signed + broken)
    wait_until(
        all_committed(settings.kafka_bootstrap, settings.consumer_group, settings.posts_topic, ends),
        timeout=180,
        interval=0.5,
        what="all committed",
        while_alive=worker,
    )
    base = f"http://127.0.0.1:{settings.metrics_port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    pages = {}
    for path in ("/metrics", "/readyz", "/livez"):
        try:
            with opener.open(base + path, timeout=5) as resp:
                pages[path] = resp.read().decode()
        except urllib.error.HTTPError as exc:  # /readyz may be 503 on a busy box; its body still counts
            pages[path] = exc.read().decode()
    assert worker.stop() == 0, worker.log_tail(40)
    dlq = read_topic(settings.kafka_bootstrap, settings.dlq_topic, expect_at_least=4, timeout_s=30)
    messages = " ".join(v.decode() for r in dlq for k, v in r.headers)
    log = worker.log_text()
    assert len(dlq) >= 4 and "BlockedURL" in messages
    assert "image refused" in log, "the worker's own DEBUG/INFO lines are in the log"
    for name, text in {"worker log": log, "dlq headers": messages, **pages}.items():
        assert not leaked(text), f"{name} leaks {leaked(text)}"
    figures_secrets.update({"worker_log_bytes": len(log), "dlq_messages": len(dlq)})
    figures_secrets["secret_checks"] += 3 + len(pages)


class _Deny(BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *a):
        pass

    def _deny(self):
        _Deny.seen.append(self.headers.get("Authorization", ""))
        body = json.dumps(
            {"error": {"type": "security_exception", "reason": "unable to authenticate"}, "status": 401}
        ).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("WWW-Authenticate", 'ApiKey, Basic realm="security"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = _deny


@pytest.mark.timeout(180)
def test_store_rejecting_the_credentials_gets_them_but_never_prints_them(
    local_stack, make_settings, worker_env, figures_secrets
):
    _Deny.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Deny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = make_settings(
            local_stack,
            es_url=f"http://127.0.0.1:{server.server_address[1]}",
            es_api_key=ES_API_KEY,
            kafka_sasl_password=SASL_PASSWORD,
            log_level="DEBUG",
        )
        worker = worker_env(settings).start()
        rc = worker.wait(timeout=120)
    finally:
        server.shutdown()
    log = worker.log_text()
    assert rc != 0, "a store refusing the credentials must stop the worker at start"
    assert "AuthenticationException" in log or "401" in log, worker.log_tail(30)
    assert f"ApiKey {ES_API_KEY}" in _Deny.seen, f"the API key did not reach the store: {_Deny.seen}"
    assert not leaked(log), f"worker output leaks {leaked(log)}"
    figures_secrets.update({"auth_headers_seen_by_stub": len(_Deny.seen), "worker_exit_code": rc})
    figures_secrets["secret_checks"] += 2
