"""workers.adapters.elastic against a real Elasticsearch-API store (noida-db)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from elasticsearch import BadRequestError, Elasticsearch
from pydantic import SecretStr

from pipelines.errors import ItemsRejected, TransientError
from schemas.results import AlertV1, AnalysisResultV2
from tests.factories import make_alert, make_result, make_results
from workers.adapters.elastic import (
    AlertSink,
    ResultSink,
    StoreRejected,
    StoreUnavailable,
    install_templates,
    make_es_client,
    ping,
    redact_url,
)
from workers.analyzer.settings import AnalyzerSettings as Settings
from workers.devstack.servers import NoidaStore, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FAST_RETRY = {"backoff_initial_s": 0.05, "backoff_max_s": 0.5}


@pytest.fixture
def settings(local_stack) -> Settings:
    """Settings on the session stack with indices unique to the test."""
    tag = uuid.uuid4().hex[:10]
    return local_stack.settings(
        es_results_index=f"results-{tag}", es_alerts_index=f"alerts-{tag}", store_retry_max_s=20.0
    )


@pytest.fixture
def es(settings) -> Elasticsearch:
    client = make_es_client(settings)
    yield client
    client.close()


def test_templates_installed_with_strict_mappings(es, settings):
    installed = install_templates(es, settings)
    assert installed == {settings.es_results_index: "template", settings.es_alerts_index: "template"}
    assert install_templates(es, settings)  # idempotent
    names = {t["name"] for t in es.indices.get_index_template(name=settings.es_results_index)["index_templates"]}
    assert names == {settings.es_results_index}
    mapping = es.indices.get_mapping(index=settings.es_results_index)[settings.es_results_index]["mappings"]
    assert mapping["dynamic"] == "strict"
    assert mapping["properties"]["regions"]["type"] == "nested"
    assert mapping["properties"]["post_id"]["type"] == "keyword"

    doc = make_result("p-unknown-field").model_dump(mode="json")
    es.index(index=settings.es_results_index, id="ok", document=doc)  # the contract's own shape fits
    with pytest.raises(BadRequestError, match="strict_dynamic_mapping_exception"):
        es.index(index=settings.es_results_index, id="bad", document={**doc, "surprise": 1})
    nested = {**doc, "regions": [{**doc["regions"][0], "surprise": 1}]}
    with pytest.raises(BadRequestError, match="strict_dynamic_mapping_exception"):
        es.index(index=settings.es_results_index, id="bad-nested", document=nested)
    alert = make_alert().model_dump(mode="json")
    with pytest.raises(BadRequestError, match="strict_dynamic_mapping_exception"):
        es.index(index=settings.es_alerts_index, id="bad-alert", document={**alert, "surprise": "x"})


def test_writing_1000_results_twice_leaves_1000_docs(es, settings):
    install_templates(es, settings)
    results = make_results(1000, regions=8, evidence=3)  # realistic: top-8 regions, 3 sentences
    sink = ResultSink(es, settings)
    t0 = time.perf_counter()
    sink.write(results)
    first_s = time.perf_counter() - t0
    # the same posts again (a redelivery, a re-analysis with other scores): created once, never overwritten
    changed = [r.model_copy(update={"negative_score": 0.99}) if i % 10 == 0 else r for i, r in enumerate(results)]
    again = ResultSink(es, settings, refresh="wait_for")
    again.write(changed)
    assert es.count(index=settings.es_results_index)["count"] == 1000
    assert sink.stats.written == 1000 and sink.stats.retries == 0
    assert again.stats.written == 1000 and again.stats.rejected == 0  # taken ids, same posts: stored
    stored = es.get(index=settings.es_results_index, id="post-00010")["_source"]
    assert AnalysisResultV2.model_validate(stored) == results[10]  # the first result stands
    stored = es.get(index=settings.es_results_index, id="post-00011")["_source"]
    assert AnalysisResultV2.model_validate(stored) == results[11]
    print(f"ResultSink: 1000 realistic results in {first_s:.3f}s = {1000 / first_s:.0f} docs/s")


def test_alert_sink_is_idempotent_by_alert_id(es, settings):
    install_templates(es, settings)
    alerts = [make_alert("news"), make_alert("sports")]
    sink = AlertSink(es, settings, refresh=True)
    sink.write(alerts)
    sink.write(alerts)
    assert es.count(index=settings.es_alerts_index)["count"] == 2
    stored = es.get(index=settings.es_alerts_index, id=alerts[0].alert_id)["_source"]
    assert AlertV1.model_validate(stored) == alerts[0]


def test_rejected_documents_raise_store_rejected_with_their_ids(es, settings):
    # An index whose mapping disagrees with the contract (channel as a number): documents whose
    # channel is not numeric are refused with a per-item 400, the others are stored.
    index = f"conflict-{uuid.uuid4().hex[:8]}"
    es.indices.create(index=index, mappings={"dynamic": False, "properties": {"channel": {"type": "long"}}})
    results = [make_result(f"r-{i}", channel=str(100 + i) if i % 3 else f"chan-{i}") for i in range(12)]
    sink = ResultSink(es, settings.model_copy(update={"es_results_index": index}), refresh=True, **FAST_RETRY)
    with pytest.raises(StoreRejected) as info:
        sink.write(results)
    bad = [r.post_id for r in results if not r.channel.isdigit()]
    assert sorted(info.value.ids) == sorted(bad)
    assert all("channel" in info.value.reasons[i] for i in bad)
    assert es.count(index=index)["count"] == 12 - len(bad)
    assert sink.stats.retries == 0  # a 400 is not retried
    assert isinstance(info.value, ItemsRejected), "the worker dead-letters ItemsRejected, whichever store raised it"
    assert info.value.only(bad[0]).reasons == {bad[0]: info.value.reasons[bad[0]]}


def test_sink_retries_while_store_restarts_mid_write(tmp_path):
    store = NoidaStore(tmp_path / "data", log_dir=tmp_path / "logs")
    with store:
        settings = Settings(es_url=store.url, es_results_index="restart-results", store_retry_max_s=30.0)
        es = make_es_client(settings, max_retries=0)
        install_templates(es, settings)
        results = make_results(1000)
        restarted = threading.Event()

        def feed() -> Iterator[AnalysisResultV2]:
            for i, result in enumerate(results):
                if i == 300:  # 300 sent in 3 chunks; the store goes away mid-batch
                    store.stop()

                    def bring_back() -> None:
                        time.sleep(1.0)
                        store.start()
                        restarted.set()

                    threading.Thread(target=bring_back, daemon=True).start()
                yield result

        sink = ResultSink(es, settings, chunk_size=100, **FAST_RETRY)
        sink.write(feed())
        assert restarted.is_set()
        assert sink.stats.retries >= 1
        es.indices.refresh(index=settings.es_results_index)
        assert es.count(index=settings.es_results_index)["count"] == 1000


def test_store_unavailable_after_retry_budget():
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(es_url=dead, es_results_index="nowhere", store_retry_max_s=1.0)
    es = make_es_client(settings, max_retries=0)
    assert ping(es) is False
    results = make_results(5)
    sink = ResultSink(es, settings, **FAST_RETRY)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        sink.write(results)
    assert 1.0 <= time.monotonic() - t0 < 10
    assert sorted(info.value.pending_ids) == sorted(r.post_id for r in results)
    assert sink.stats.retries >= 2 and sink.stats.failed_batches == 1
    assert isinstance(info.value, TransientError), "the worker waits out a TransientError, whichever store raised it"


def test_client_from_settings_keeps_secrets_out_of_logs(capsys, noida):
    basic = Settings(es_url=noida.url, es_username="elastic", es_password=SecretStr("s3cr3t-pw"))
    client = make_es_client(basic)
    assert client._headers["authorization"].startswith("Basic ")
    assert ping(client)  # noida-db ignores credentials
    keyed = make_es_client(Settings(es_url=noida.url, es_api_key=SecretStr("k3y-value")))
    assert keyed._headers["authorization"] == "ApiKey k3y-value"
    out = capsys.readouterr()
    assert "s3cr3t-pw" not in out.out + out.err and "k3y-value" not in out.out + out.err
    assert redact_url("https://user:pw@es.example:9243/x") == "https://es.example:9243/x"
    assert "pw" not in redact_url("https://user:pw@es.example:9243/x")
