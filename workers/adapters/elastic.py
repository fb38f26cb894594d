"""The Elasticsearch side: client, index templates, idempotent bulk sinks.

The same code runs against real Elasticsearch 8 and the local noida-db (which supports composable
index templates, dynamic: strict, nested, bulk and refresh=wait_for; checked on 0.2.3).

Write semantics (at-least-once upstream, idempotent here):
- `_id` = the document's id field (post_id / alert_id), op_type index -> a re-delivery overwrites.
- Items failing with 429 / 5xx / 408, and connection errors or timeouts, are retried (only those
  items) with exponential backoff and full jitter until `retry_max_s` (settings.store_retry_max_s)
  has passed; then `StoreUnavailable` is raised and nothing may be committed upstream.
- Items rejected with 400 (mapping / parsing errors: the document's own fault) are not retried;
  once every other item is stored, `StoreRejected` is raised carrying their ids and reasons so the
  worker can dead-letter exactly those posts and commit the rest.
- Any other non-retryable failure (401/403 credentials, 404 missing index without auto-create, a
  request-level 4xx) raises `StoreUnavailable` at once: it is not the documents' fault and
  retrying for minutes would not help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import structlog
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TransportError
from elasticsearch import ApiError, Elasticsearch, helpers
from pydantic import BaseModel
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from pipelines.errors import ItemsRejected, TransientError
from schemas.es_templates import alerts_template, results_template
from schemas.results import AlertV1, AnalysisResultV2
from workers.common.redact import redact_url
from workers.common.settings import ElasticsearchSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))
REJECTED_STATUS = frozenset({400})

__all__ = [
    "AlertSink",
    "BulkSink",
    "ResultSink",
    "SinkStats",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "install_index",
    "install_templates",
    "make_es_client",
    "ping",
    "redact_url",
]


# ---- errors ------------------------------------------------------------------------------------


class StoreError(RuntimeError):
    """Base class of the sink errors."""


class StoreUnavailable(StoreError, TransientError):
    """The store did not accept the batch (retries exhausted, or a non-retryable store-side error).
    Nothing about the batch may be committed; `pending_ids` were not confirmed stored."""

    def __init__(
        self, message: str, *, pending_ids: list[str], last_error: str | None = None, status: int | None = None
    ):
        super().__init__(message)
        self.pending_ids = pending_ids
        self.last_error = last_error
        self.status = status


class StoreRejected(StoreError, ItemsRejected):
    """Some documents were refused as invalid (HTTP 400 per item); every other document of the
    batch IS stored. `ids` lists the refused ones, `reasons` maps id -> error text."""

    def __init__(self, reasons: dict[str, str], *, index: str, conflicts: Iterable[str] = ()):
        self.index = index
        self.conflicts = set(conflicts) & set(reasons)
        sample = "; ".join(f"{k}: {v}" for k, v in list(reasons.items())[:3])
        super().__init__(reasons, f"{len(reasons)} document(s) rejected by {index}: {sample}")

    def only(self, item_id: str) -> StoreRejected:
        kind = IdConflict if item_id in self.conflicts else StoreRejected
        return kind({item_id: self.reasons[item_id]}, index=self.index, conflicts=self.conflicts)


class IdConflict(StoreRejected):
    """The document's id already stands for a different document (a reused post_id): the stored one
    is kept, this one is refused."""


# ---- client ------------------------------------------------------------------------------------


def make_es_client(settings: ElasticsearchSettings, **overrides: Any) -> Elasticsearch:
    """An Elasticsearch client from the MOODWATCH_ES_* settings: url, basic auth or api key, CA file, timeouts.

    The client retries a failed request itself a couple of times (other node / timeout); the sinks
    add the long, backed-off retry on top. Secrets are only unwrapped here and never logged.
    """
    kwargs: dict[str, Any] = {
        "request_timeout": settings.es_request_timeout_s,
        # A timeout goes straight back to the sink, which counts and logs it before retrying: retried
        # inside the client, a hung store would stay invisible for (max_retries + 1) x request_timeout.
        "retry_on_timeout": False,
        "max_retries": 2,
    }
    auth = "none"
    if settings.es_api_key is not None:
        kwargs["api_key"] = settings.es_api_key.get_secret_value()
        auth = "api_key"
    elif settings.es_username is not None:
        password = settings.es_password.get_secret_value() if settings.es_password is not None else ""
        kwargs["basic_auth"] = (settings.es_username, password)
        auth = "basic"
    if settings.es_ca_certs is not None:
        kwargs["ca_certs"] = str(settings.es_ca_certs)
    kwargs.update(overrides)
    log.info("es_client", url=redact_url(settings.es_url), auth=auth, ca_certs=bool(settings.es_ca_certs),
             request_timeout_s=settings.es_request_timeout_s)  # fmt: skip
    return Elasticsearch(settings.es_url, **kwargs)


def ping(es: Elasticsearch) -> bool:
    """Readiness: True when the store answers its root endpoint."""
    try:
        return bool(es.ping())
    except Exception:  # noqa: BLE001 - ping() already maps most failures to False; be safe for the rest
        return False


# ---- templates ---------------------------------------------------------------------------------


def _ensure_index(es: Elasticsearch, name: str, template: dict[str, Any], *, used_template: bool) -> None:
    mappings = template["template"]["mappings"]
    if not es.indices.exists(index=name):
        try:
            if used_template:
                es.indices.create(index=name)  # settings + mappings come from the template
            else:
                es.indices.create(index=name, settings=template["template"]["settings"], mappings=mappings)
            log.info("es_index_created", index=name)
            return
        except ApiError as exc:
            if getattr(exc, "error", "") != "resource_already_exists_exception":
                raise
    # Existing index (or lost a creation race): add any new fields. Adding fields is allowed;
    # changing a field's type is not and raises (400) -> a new index / reindex is needed.
    es.indices.put_mapping(index=name, properties=mappings["properties"], dynamic=mappings.get("dynamic", "strict"))


def install_index(es: Elasticsearch, index: str, template: dict[str, Any]) -> str:
    """Put the composable template for ``index`` and create the index if missing (idempotent); an existing
    index gets any new fields added to its mapping. Returns how the index got its mapping: "template", or
    "mappings" on stores without composable templates (404/400/405 on PUT _index_template), where the index
    is created directly with the template's settings and mappings (noida-db 0.2.3 supports templates)."""
    try:
        es.indices.put_index_template(name=index, **template)
    except ApiError as exc:
        unsupported = exc.status_code in (404, 405, 501) or (
            exc.status_code == 400 and any(s in str(exc).lower() for s in ("no handler", "unrecognized", "unknown"))
        )
        if not unsupported:
            raise  # e.g. an overlapping template of the same priority: a real configuration error
        log.warning("es_index_templates_unsupported", index=index, status=exc.status_code, error=str(exc)[:300])
        _ensure_index(es, index, template, used_template=False)
        return "mappings"
    _ensure_index(es, index, template, used_template=True)
    return "template"


def install_templates(es: Elasticsearch, settings: ElasticsearchSettings) -> dict[str, str]:
    """Templates and indices of the results and the alerts (see ``install_index``)."""
    return {
        settings.es_results_index: install_index(
            es, settings.es_results_index, results_template(settings.es_results_index)
        ),
        settings.es_alerts_index: install_index(
            es, settings.es_alerts_index, alerts_template(settings.es_alerts_index)
        ),
    }


# ---- sinks -------------------------------------------------------------------------------------


@dataclass
class SinkStats:
    """Counters since the sink was created (cheap to export as metrics)."""

    written: int = 0
    rejected: int = 0
    retries: int = 0
    batches: int = 0
    failed_batches: int = 0
    seconds: float = 0.0
    last_error: str | None = field(default=None)


class _RetryableFailure(Exception):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _error_text(item: dict[str, Any]) -> str:
    err = item.get("error")
    if isinstance(err, dict):
        text = f"{err.get('type', 'error')}: {err.get('reason', '')}"
        caused = err.get("caused_by")
        if isinstance(caused, dict) and caused.get("reason"):
            text += f" (caused by {caused.get('type')}: {caused.get('reason')})"
        return text[:1000]
    return str(err)[:1000]


class BulkSink(Generic[M]):
    """Idempotent bulk writer of pydantic documents into one index, `_id` = `id_field`."""

    def __init__(
        self,
        es: Elasticsearch,
        index: str,
        id_field: str,
        *,
        op_type: str = "index",
        identity_fields: tuple[str, ...] = (),
        retry_max_s: float = 600.0,
        refresh: bool | str = False,
        chunk_size: int = 500,
        max_chunk_bytes: int = 20 * 1024 * 1024,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        on_failed_attempt: Callable[[], None] = lambda: None,
    ) -> None:
        self.es = es
        self.index = index
        self.id_field = id_field
        self.op_type = op_type
        self.identity_fields = identity_fields
        self.retry_max_s = retry_max_s
        self.refresh = refresh
        self.chunk_size = chunk_size
        self.max_chunk_bytes = max_chunk_bytes
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._on_failed_attempt = on_failed_attempt  # e.g. the worker's store-errors counter, per attempt
        self.stats = SinkStats()

    def _doc_id(self, doc: M) -> str:
        return str(getattr(doc, self.id_field))

    def write(self, docs: Iterable[M]) -> None:
        """Store every document (a list, or any iterable, consumed lazily once).

        Ids should be unique within one call (the worker dedupes a batch); with duplicates the
        last one wins when all succeed at the first try.

        Returns when all are stored. Raises StoreRejected (the others ARE stored) or
        StoreUnavailable (unknown which are stored; nothing may be committed).
        """
        t0 = time.monotonic()
        batch = _PendingDocuments(docs, self.index, self._doc_id, self.op_type)
        self.stats.batches += 1
        retrying = Retrying(
            retry=retry_if_exception_type(_RetryableFailure),
            wait=wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            stop=stop_after_delay(self.retry_max_s),
            before_sleep=partial(self._log_retry, batch),
            sleep=self._sleep,
            reraise=False,
        )
        try:
            retrying(self._send, batch)
        except RetryError as exc:
            self.stats.failed_batches += 1
            last = exc.last_attempt.exception()
            log.error("es_write_gave_up", index=self.index, pending=len(batch.unconfirmed),
                      after_s=round(time.monotonic() - t0, 1), error=str(last)[:500])  # fmt: skip
            raise StoreUnavailable(
                f"{self.index}: {len(batch.unconfirmed)} document(s) not stored after {time.monotonic() - t0:.1f} s"
                f" of retries: {last}",
                pending_ids=list(batch.unconfirmed),
                last_error=str(last),
                status=getattr(last, "status", None),
            ) from last
        except StoreUnavailable:
            self.stats.failed_batches += 1
            raise
        finally:
            self.stats.seconds += time.monotonic() - t0
        if batch.rejected:
            self.stats.rejected += len(batch.rejected)
            log.warning("es_write_rejected", index=self.index, count=len(batch.rejected), ids=list(batch.rejected)[:20])
            raise StoreRejected(batch.rejected, index=self.index, conflicts=batch.conflicts)

    def _send(self, batch: _PendingDocuments) -> None:
        """One streaming bulk pass over the unconfirmed documents. Raises _RetryableFailure when some are
        left to retry, StoreUnavailable when the store refuses the request itself."""
        retry: _RetryableFailure | None = None
        try:
            for ok, result in helpers.streaming_bulk(
                self.es,
                batch.actions(),
                chunk_size=self.chunk_size,
                max_chunk_bytes=self.max_chunk_bytes,
                raise_on_error=False,
                raise_on_exception=False,
                max_retries=0,  # retries are ours: per item, backed off, bounded by retry_max_s
                **({"refresh": self.refresh} if self.refresh else {}),
            ):
                (item,) = result.values()
                retry = self._settle(batch, ok, item) or retry
            self._resolve_conflicts(batch)
        except (TransportConnectionError, ConnectionTimeout) as exc:
            raise _RetryableFailure(f"{type(exc).__name__}: {exc}") from exc
        except ApiError as exc:  # outside the bulk call (should not happen); classify by status
            if exc.status_code in RETRYABLE_STATUS:
                raise _RetryableFailure(f"HTTP {exc.status_code}: {exc}", exc.status_code) from exc
            raise
        except TransportError as exc:  # other transport-level trouble (TLS, serialisation of the reply)
            raise _RetryableFailure(f"{type(exc).__name__}: {exc}") from exc
        if retry is not None or not batch.done:
            raise retry or _RetryableFailure("documents left unconfirmed")

    def _settle(self, batch: _PendingDocuments, ok: bool, item: dict[str, Any]) -> _RetryableFailure | None:
        """Record the store's answer for one document; the failure to retry it for, if any."""
        doc_id = str(item.get("_id"))
        status = int(item.get("status", 500))
        if ok:
            batch.stored(doc_id)
            self.stats.written += 1
            return None
        if status == 409 and self.op_type == "create":
            batch.conflicting.append(doc_id)  # compared with the stored document after this pass
            return None
        error = _error_text(item)
        if status in RETRYABLE_STATUS:
            return _RetryableFailure(f"HTTP {status}: {error}", status)
        if status in REJECTED_STATUS and "exception" not in item:
            batch.reject(doc_id, error)  # a per-item 400 (mapping / parsing): the document's own fault
            return None
        # request-level 4xx or 401/403/404...: not the document's fault
        raise StoreUnavailable(
            f"store refused the bulk request to {self.index} (HTTP {status}): {error}",
            pending_ids=list(batch.unconfirmed),
            last_error=error,
            status=status,
        )

    def _resolve_conflicts(self, batch: _PendingDocuments) -> None:
        """``create`` found these ids taken: the same document (a re-processed post) counts as stored,
        a different one (per ``identity_fields``) is refused as a conflict. One request, only on conflict."""
        if not batch.conflicting:
            return
        ids, batch.conflicting = batch.conflicting, []
        resp = self.es.mget(index=self.index, ids=ids, source_includes=list(self.identity_fields))
        for found in resp["docs"]:
            doc_id = str(found["_id"])
            if not found.get("found"):
                continue  # deleted meanwhile: stays unconfirmed, created on the retry
            stored = found.get("_source") or {}
            new = batch.unconfirmed.get(doc_id, {})
            # a field the stored document lacks (written before the field existed) is not compared
            differing = [f for f in self.identity_fields if stored.get(f) is not None and stored.get(f) != new.get(f)]
            if differing:
                batch.reject(doc_id, f"id {doc_id!r} already stands for a different document ({', '.join(differing)})")
                batch.conflicts.add(doc_id)
            else:
                batch.stored(doc_id)
                self.stats.written += 1

    def _log_retry(self, batch: _PendingDocuments, state: RetryCallState) -> None:
        self.stats.retries += 1
        self._on_failed_attempt()
        exc = state.outcome.exception() if state.outcome else None
        self.stats.last_error = str(exc)[:500] if exc else None
        log.warning(
            "es_write_retry",
            index=self.index,
            attempt=state.attempt_number,
            pending=len(batch.unconfirmed),
            wait_s=round(state.next_action.sleep if state.next_action else 0.0, 3),
            error=self.stats.last_error,
        )


class _PendingDocuments:
    """The documents of one write() not yet confirmed stored; the input is read lazily, once."""

    def __init__(self, docs: Iterable[BaseModel], index: str, doc_id: Callable[[Any], str], op_type: str) -> None:
        self._input = iter(docs)
        self._index = index
        self._doc_id = doc_id
        self._op_type = op_type
        self.conflicting: list[str] = []  # ids a create found taken in the current pass
        self.conflicts: set[str] = set()  # of the rejected: ids that stand for another document
        self.input_read = False
        self.unconfirmed: dict[str, dict[str, Any]] = {}  # id -> serialised source
        self.rejected: dict[str, str] = {}  # id -> why the store refused it

    @property
    def done(self) -> bool:
        return self.input_read and not self.unconfirmed

    def actions(self) -> Iterator[dict[str, Any]]:
        """The unconfirmed documents first (a snapshot: they are removed as they are confirmed), then the
        documents not yet taken from the input."""
        for doc_id, body in list(self.unconfirmed.items()):
            yield self._action(doc_id, body)
        if not self.input_read:
            yield from self._read_input()

    def _read_input(self) -> Iterator[dict[str, Any]]:
        for doc in self._input:
            doc_id = self._doc_id(doc)
            body = doc.model_dump(mode="json")
            self.unconfirmed[doc_id] = body  # a duplicate id in one batch: the last one wins
            yield self._action(doc_id, body)
        self.input_read = True

    def _action(self, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"_op_type": self._op_type, "_index": self._index, "_id": doc_id, "_source": body}

    def stored(self, doc_id: str) -> None:
        self.unconfirmed.pop(doc_id, None)

    def reject(self, doc_id: str, reason: str) -> None:
        self.unconfirmed.pop(doc_id, None)
        self.rejected[doc_id] = reason


class ResultSink(BulkSink[AnalysisResultV2]):
    """AnalysisResultV2 -> settings.es_results_index, `_id` = post_id, created once: a post_id that
    already stands for another post (author, channel, image) is refused as IdConflict, never overwritten;
    the same post again is a no-op."""

    IDENTITY = ("content_fingerprint", "author_id", "channel", "image_ref")

    def __init__(self, es: Elasticsearch, settings: ElasticsearchSettings, **kw: Any) -> None:
        kw.setdefault("retry_max_s", settings.store_retry_max_s)
        kw.setdefault("op_type", "create")
        kw.setdefault("identity_fields", self.IDENTITY)
        super().__init__(es, settings.es_results_index, "post_id", **kw)


class AlertSink(BulkSink[AlertV1]):
    """AlertV1 -> settings.es_alerts_index, `_id` = alert_id."""

    def __init__(self, es: Elasticsearch, settings: ElasticsearchSettings, **kw: Any) -> None:
        kw.setdefault("retry_max_s", settings.store_retry_max_s)
        super().__init__(es, settings.es_alerts_index, "alert_id", **kw)
