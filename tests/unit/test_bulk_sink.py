"""BulkSink.write against a fake Elasticsearch client driven by the real `helpers.streaming_bulk`: what is
retried (only the documents that failed with 429 / 5xx, or a whole request that did not connect), what is
dead-lettered (a per-document 400, with its own reason) and when the sink gives up (the retry budget)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig, ObjectApiResponse, SerializerCollection
from elastic_transport import ConnectionError as TransportConnectionError
from elasticsearch import AuthorizationException
from elasticsearch._otel import OpenTelemetry
from elasticsearch.serializer import JsonSerializer

from schemas.results import AnalysisResultV2
from tests.factories import make_results
from workers.adapters.elastic import BulkSink, IdConflict, StoreRejected, StoreUnavailable

INDEX = "results-test"
FAST_RETRY = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05}


def _meta(status: int) -> ApiResponseMeta:
    return ApiResponseMeta(
        status=status,
        http_version="1.1",
        headers=HttpHeaders(),
        duration=0.0,
        node=NodeConfig("http", "localhost", 9200),
    )


class FakeElasticsearch:
    """The part of the Elasticsearch client that streaming_bulk uses: options(), the JSON serializer, the
    tracing hooks and bulk(operations=[action line, source line, ...]).

    `status(doc_id, attempt)` answers each document (attempt counts from 1); `request_error(n)` may return
    an exception that the n-th bulk request (from 1) raises instead of answering."""

    def __init__(
        self,
        status: Callable[[str, int], int] = lambda doc_id, attempt: 201,
        request_error: Callable[[int], Exception | None] = lambda n: None,
    ) -> None:
        self._otel = OpenTelemetry(enabled=False)
        self.transport = SimpleNamespace(serializers=SerializerCollection({"application/json": JsonSerializer()}))
        self.status, self.request_error = status, request_error
        self.stored: dict[str, dict] = {}
        self.requests: list[list[str]] = []  # the document ids of each bulk request
        self.params: list[dict] = []
        self.attempts: Counter[str] = Counter()
        self.mgets: list[list[str]] = []

    def options(self, **_kw) -> FakeElasticsearch:
        return self

    def bulk(self, *, operations: list[bytes], **params) -> ObjectApiResponse:
        lines = [json.loads(line) for line in operations]
        pairs = list(zip(lines[::2], lines[1::2]))
        self.requests.append([next(iter(action.values()))["_id"] for action, _source in pairs])
        self.params.append(params)
        error = self.request_error(len(self.requests))
        if error is not None:
            raise error
        items = [{op: self._index(op, meta, source)} for (op, meta), source in ((*a.items(), s) for a, s in pairs)]
        body = {"took": 1, "errors": any(next(iter(i.values()))["status"] >= 300 for i in items), "items": items}
        return ObjectApiResponse(body=body, meta=_meta(200))

    def mget(self, *, index: str, ids: list[str], source_includes: list[str]) -> dict:
        self.mgets.append(list(ids))
        docs = []
        for doc_id in ids:
            stored = self.stored.get(doc_id)
            source = {k: v for k, v in (stored or {}).items() if k in source_includes}
            docs.append({"_index": index, "_id": doc_id, "found": stored is not None, "_source": source})
        return {"docs": docs}

    def _index(self, op: str, action: dict, source: dict) -> dict:
        doc_id = action["_id"]
        self.attempts[doc_id] += 1
        status = self.status(doc_id, self.attempts[doc_id])
        if op == "create" and doc_id in self.stored and status < 300:
            status = 409
        item = {"_index": action["_index"], "_id": doc_id, "status": status}
        if status == 409:
            item["error"] = {"type": "version_conflict_engine_exception", "reason": f"[{doc_id}]: document exists"}
        elif status < 300:
            self.stored[doc_id] = source
        elif status == 400:
            item["error"] = {
                "type": "mapper_parsing_exception",
                "reason": f"failed to parse [channel] of {doc_id}",
                "caused_by": {"type": "illegal_argument_exception", "reason": "not a number"},
            }
        else:
            item["error"] = {"type": "es_rejected_execution_exception", "reason": "queue full"}
        return item


def sink(es: FakeElasticsearch, **kw) -> tuple[BulkSink[AnalysisResultV2], list[float]]:
    sleeps: list[float] = []
    kw = {"sleep": sleeps.append, "retry_max_s": 5.0, **FAST_RETRY, **kw}  # a regression fails, never spins
    return BulkSink(es, INDEX, "post_id", **kw), sleeps


def test_all_acknowledged_in_one_request_with_id_equal_to_post_id():
    es = FakeElasticsearch()
    results = make_results(5)
    bulk, sleeps = sink(es, refresh="wait_for")
    bulk.write(results)
    assert es.requests == [[r.post_id for r in results]]
    assert es.stored == {r.post_id: r.model_dump(mode="json") for r in results}
    assert es.params == [{"refresh": "wait_for"}]
    assert (bulk.stats.written, bulk.stats.retries, bulk.stats.batches, bulk.stats.failed_batches) == (5, 0, 1, 0)
    assert sleeps == []


def test_documents_answered_429_are_retried_alone_until_stored():
    busy = {"post-00001", "post-00003"}
    es = FakeElasticsearch(status=lambda doc_id, attempt: 429 if doc_id in busy and attempt <= 2 else 201)
    results = make_results(4)
    bulk, sleeps = sink(es)
    bulk.write(results)
    assert es.requests == [[r.post_id for r in results], sorted(busy), sorted(busy)]
    assert set(es.stored) == {r.post_id for r in results}
    assert bulk.stats.written == 4 and bulk.stats.retries == 2 and len(sleeps) == 2
    assert "HTTP 429" in bulk.stats.last_error


def test_a_400_mapping_error_rejects_that_document_with_its_reason_and_stores_the_others():
    es = FakeElasticsearch(status=lambda doc_id, attempt: 400 if doc_id == "post-00002" else 201)
    results = make_results(4)
    bulk, sleeps = sink(es)
    with pytest.raises(StoreRejected) as info:
        bulk.write(results)
    assert info.value.ids == ["post-00002"] and info.value.index == INDEX
    assert info.value.reasons["post-00002"] == (
        "mapper_parsing_exception: failed to parse [channel] of post-00002"
        " (caused by illegal_argument_exception: not a number)"
    )
    assert set(es.stored) == {"post-00000", "post-00001", "post-00003"}
    assert len(es.requests) == 1 and sleeps == [], "a 400 is the document's fault: never retried"
    assert bulk.stats.rejected == 1 and bulk.stats.written == 3


def test_a_connection_error_mid_stream_resends_the_unconfirmed_documents_then_reads_on():
    es = FakeElasticsearch(request_error=lambda n: TransportConnectionError("connection refused") if n == 2 else None)
    results = make_results(6)
    taken: list[str] = []

    def lazily() -> Iterator[AnalysisResultV2]:
        for result in results:
            taken.append(result.post_id)
            yield result

    bulk, sleeps = sink(es, chunk_size=2)
    bulk.write(lazily())
    ids = [r.post_id for r in results]
    assert es.requests == [ids[0:2], ids[2:4], ids[2:4], ids[4:6]]
    assert taken == ids, "the input is read once"
    assert set(es.stored) == set(ids) and bulk.stats.retries == 1 and len(sleeps) == 1


def test_a_connection_error_longer_than_the_budget_raises_store_unavailable():
    es = FakeElasticsearch(request_error=lambda n: TransportConnectionError("connection refused"))
    results = make_results(3)
    bulk, _ = sink(es, retry_max_s=0.3, sleep=time.sleep)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="3 document") as info:
        bulk.write(results)
    assert 0.3 <= time.monotonic() - started < 3
    assert sorted(info.value.pending_ids) == sorted(r.post_id for r in results)
    assert info.value.last_error.startswith("ConnectionError")
    assert len(es.requests) >= 3 and bulk.stats.retries == len(es.requests) - 1
    assert bulk.stats.failed_batches == 1 and es.stored == {}


def test_a_request_the_store_refuses_outright_raises_store_unavailable_at_once():
    forbidden = AuthorizationException("security_exception", _meta(403), {"error": "forbidden"})
    es = FakeElasticsearch(request_error=lambda n: forbidden)
    bulk, sleeps = sink(es)
    with pytest.raises(StoreUnavailable) as info:
        bulk.write(make_results(2))
    assert info.value.status == 403 and len(es.requests) == 1 and sleeps == []
    assert bulk.stats.failed_batches == 1


def test_create_stores_a_new_id_once_and_takes_the_same_document_again_as_stored():
    es = FakeElasticsearch()
    writer, _ = sink(es, op_type="create", identity_fields=("author_id", "channel"))
    docs = make_results(3)
    writer.write(docs)
    assert es.mgets == []  # the common path is one bulk request, no look-up
    writer.write(docs)  # re-processed: 409 on every id, the same documents stored -> no error
    assert es.mgets == [[d.post_id for d in docs]]
    assert {k: v["author_id"] for k, v in es.stored.items()} == {d.post_id: d.author_id for d in docs}


def test_create_refuses_a_reused_id_as_a_conflict_and_keeps_the_stored_document():
    es = FakeElasticsearch()
    writer, _ = sink(es, op_type="create", identity_fields=("author_id", "channel"))
    original, other = make_results(2)
    writer.write([original])
    intruder = original.model_copy(update={"author_id": "mallory"})
    with pytest.raises(StoreRejected) as info:
        writer.write([intruder, other])
    assert info.value.ids == [original.post_id] and info.value.conflicts == {original.post_id}
    narrowed = info.value.only(original.post_id)
    assert type(narrowed) is IdConflict and "author_id" in str(narrowed)
    assert es.stored[original.post_id]["author_id"] == original.author_id  # never overwritten
    assert other.post_id in es.stored
