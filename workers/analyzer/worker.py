"""The streaming analyzer worker: posts topic -> validate -> fetch/decode -> Analyzer -> store -> commit.

Delivery contract: offsets are committed only after every post of the batch is either stored in
Elasticsearch (`_id = post_id`, so re-processing overwrites instead of duplicating) and published to
the results topic, or dead-lettered with headers. A crash at any point re-reads the batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, OffsetAndMetadata, TopicPartition
from kafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)

from pipelines.analyzer_api import AnalysisFailed, Analyzer
from pipelines.text import PostText
from pipelines.thumbnails import thumbnail_or_none
from schemas.posts import KeyMismatch, MalformedPost, PostError, PostV1, parse_post
from schemas.results import AnalysisResultV2, ImageAnalysis, Region, StageTimings
from workers.analyzer.metrics import WorkerMetrics
from workers.analyzer.ports import GroupConsumer, ImageSource, ItemsRejected, Producer, ResultStore, TransientError
from workers.analyzer.settings import AnalyzerSettings
from workers.common.logs import get_logger

log = get_logger("moodwatch.analyzer")

_REBALANCED = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)


@dataclass
class Rejected:
    """A post that is dead-lettered: the original record plus why and where it failed."""

    record: Any
    error: BaseException
    stage: str


@dataclass
class Accepted:
    record: Any
    post: PostV1
    image: Any = None
    fetch_seconds: float = 0.0


@dataclass
class BatchReport:
    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def dlq_headers(rejected: Rejected) -> list[tuple[str, bytes]]:
    record = rejected.record
    message = str(rejected.error)[:1000]
    return [
        ("error.class", type(rejected.error).__name__.encode()),
        ("error.message", message.encode("utf-8", "replace")),
        ("stage", rejected.stage.encode()),
        ("original.topic", str(record.topic).encode()),
        ("original.partition", str(record.partition).encode()),
        ("original.offset", str(record.offset).encode()),
        ("failed.at", datetime.now(UTC).isoformat().encode()),
    ]


def _shown(key: bytes | None) -> str:
    return "(none)" if key is None else repr(key.decode("utf-8", "replace")[:80])


def _rounds_by_post_id(done: list[tuple[Accepted, AnalysisResultV2]]) -> list[list[tuple[Accepted, AnalysisResultV2]]]:
    """Split into rounds holding each post_id at most once, in arrival order (round n = n-th occurrence);
    one (empty) round for an empty batch, so the store is still asked (and an outage still noticed)."""
    rounds: list[list[tuple[Accepted, AnalysisResultV2]]] = [[]]
    seen: dict[str, int] = {}
    for pair in done:
        n = seen.get(pair[1].post_id, 0)
        seen[pair[1].post_id] = n + 1
        if n == len(rounds):
            rounds.append([])  # a second occurrence of a post_id in this batch
        rounds[n].append(pair)
    return rounds


def commit_offsets(records: Sequence[Any]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The next offset to read for every partition touched by the batch."""
    highest: dict[TopicPartition, int] = {}
    for r in records:
        tp = TopicPartition(r.topic, r.partition)
        highest[tp] = max(highest.get(tp, -1), r.offset)
    return {tp: OffsetAndMetadata(off + 1, "", -1) for tp, off in highest.items()}


def in_source_pixels(analysis: ImageAnalysis, image: Any) -> ImageAnalysis:
    """Region boxes of an analysis of a downscaled array, mapped back onto the source image."""
    h, w = image.rgb.shape[:2]
    if (w, h) == (image.width, image.height):
        return analysis
    sx, sy = image.width / w, image.height / h

    def box(r: Region) -> dict[str, int]:
        x0, y0 = min(int(r.x0 * sx), image.width - 1), min(int(r.y0 * sy), image.height - 1)
        x1, y1 = min(math.ceil(r.x1 * sx), image.width), min(math.ceil(r.y1 * sy), image.height)
        return {"x0": x0, "y0": y0, "x1": max(x1, x0 + 1), "y1": max(y1, y0 + 1)}

    regions = [r.model_copy(update=box(r)) for r in analysis.regions]
    return analysis.model_copy(update={"regions": regions, "image_width": image.width, "image_height": image.height})


STALL_EXIT_CODE = 75  # EX_TEMPFAIL: restart me


def exit_stalled(seconds: float) -> None:
    log.error(
        "kafka consumer stalled; exiting for a restart (uncommitted work is re-read)",
        stalled_s=round(seconds, 1),
        exit_code=STALL_EXIT_CODE,
    )
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    os._exit(STALL_EXIT_CODE)  # the main thread is stuck in the client: a clean shutdown cannot run


class AnalyzerWorker:
    """One consumer-group member. All dependencies are injected so tests can swap any of them."""

    def __init__(
        self,
        settings: AnalyzerSettings,
        *,
        consumer: GroupConsumer,
        producer: Producer,
        analyzer: Analyzer,
        images: ImageSource,
        store: ResultStore,
        metrics: WorkerMetrics,
        on_tick: Callable[[], None] = lambda: None,
        on_stall: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.analyzer = analyzer
        self.images = images
        self.store = store
        self.metrics = metrics
        self.on_tick = on_tick
        self.stop_event = threading.Event()
        self.waiting = False  # True while an outage is waited out with the partitions paused
        self._last_lag_check = 0.0
        self.on_stall = on_stall or exit_stalled
        self._poll_started: float | None = None
        self._lag_total: int | None = None  # from the last lag refresh; None when unknown
        self._last_progress = time.monotonic()
        self._watchdog_stop = threading.Event()

    # ---- lifecycle -------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def _stop(signum, _frame):
            log.info("shutdown requested", signal=signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def subscribe(self) -> None:
        self.consumer.subscribe([self.settings.posts_topic], listener=_PauseWhileWaiting(self))

    def run(self, *, max_batches: int | None = None, idle_exit_s: float | None = None) -> None:
        """Consume until stopped (SIGTERM finishes the batch in hand, then commits and exits)."""
        self.subscribe()
        batches, idle_since = 0, time.monotonic()
        log.info(
            "analyzer started",
            topic=self.settings.posts_topic,
            group=self.settings.consumer_group,
            backend=self.analyzer.versions.backend,
        )
        watchdog = threading.Thread(target=self._watch_for_stalls, name="kafka-stall-watchdog", daemon=True)
        watchdog.start()
        try:
            while not self.stop_event.is_set():
                self.on_tick()
                records = self.poll_batch()
                if not records:
                    self._update_lag()  # an idle worker must report its lag falling to zero
                    self._check_fetch_stall()
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    continue
                idle_since = self._last_progress = time.monotonic()
                try:
                    self.process(records)
                except ShutdownDuringRetry as exc:
                    log.warning("stopping with the batch in hand uncommitted", reason=str(exc))
                    break
                batches += 1
                if max_batches is not None and batches >= max_batches:
                    break
        finally:
            self._watchdog_stop.set()
            self.close()

    def _watch_for_stalls(self) -> None:
        """A poll() that never returns (a client hang) is caught here, off the main thread. For both
        stalls the way out is the supervisor's: exit, be restarted, resume from the committed
        offsets; whatever was in hand uncommitted is re-read, nothing is lost."""
        limit = self.settings.kafka_stall_exit_s
        while not self._watchdog_stop.wait(min(1.0, limit / 10)):
            since = self._poll_started
            if since is not None and time.monotonic() - since > limit:
                self.on_stall(time.monotonic() - since)
                return

    def _check_fetch_stall(self) -> None:
        """The other kafka-python 3.0 stall (upstream issues 3106, 3131): poll() keeps returning nothing
        although the assigned, unpaused partitions have lag. Only a fresh consumer recovers."""
        now = time.monotonic()
        if not self._lag_total or self.waiting:
            self._last_progress = now  # nothing to read (or lag unknown): idle, not stalled
            return
        stalled = now - self._last_progress
        if stalled > self.settings.kafka_stall_exit_s:
            log.error(
                "consumer returns no records although its partitions have lag",
                lag=self._lag_total,
                stalled_s=round(stalled, 1),
            )
            self.on_stall(stalled)

    def _poll(self, timeout_ms: int, **kw: Any) -> dict[Any, list[Any]]:
        self._poll_started = time.monotonic()
        try:
            return self.consumer.poll(timeout_ms=timeout_ms, **kw)
        finally:
            self._poll_started = None

    def close(self) -> None:
        try:
            self.producer.flush(timeout=10)
        except Exception as exc:  # noqa: BLE001 - closing must not raise over the original error
            log.warning("producer flush on close failed", error=str(exc))
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=10)
        self.analyzer.close()

    # ---- one micro-batch -------------------------------------------------------------------------

    def poll_batch(self) -> list[Any]:
        """Collect up to batch_max_posts records, waiting at most batch_max_wait_ms after the first."""
        limit = self.settings.batch_max_posts
        wait_s = self.settings.batch_max_wait_ms / 1000
        records: list[Any] = []
        started = time.monotonic()
        deadline = started + wait_s
        while len(records) < limit and not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            polled = self._poll(timeout_ms=max(1, int(remaining * 1000)), max_records=limit - len(records))
            for batch in polled.values():
                records.extend(batch)
            if not records:
                deadline = time.monotonic() + wait_s  # the clock starts with the first record
                if time.monotonic() - started > wait_s:
                    break
        if records:
            self.metrics.stage_duration.labels("poll").observe(time.monotonic() - started)
        return records

    def process(self, records: list[Any]) -> BatchReport:
        report = BatchReport(consumed=len(records))
        self.metrics.posts_consumed.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        rejected: list[Rejected] = []

        with self._stage("validate", report):
            accepted = self._validate(records, rejected)
        with self._stage("fetch", report):
            accepted = self._fetch(accepted, rejected)
        with self._stage("analyze", report):
            done = self._analyze(accepted, rejected)
        with self._stage("store", report):
            results = self._store(done, rejected)
        with self._stage("produce", report):
            self._retry_until_done("produce", lambda: self._produce(results, rejected), self.metrics.producer_errors)
        with self._stage("commit", report):
            committed = self._commit(records)

        report.processed, report.dead_lettered = len(results), len(rejected)
        if committed:
            self.metrics.posts_processed.inc(len(results))
            for item in rejected:
                self.metrics.posts_dead_lettered.labels(item.stage).inc()
            self.metrics.batches.inc()
        self._update_lag()
        log.info(
            "batch",
            consumed=report.consumed,
            processed=report.processed,
            dead_lettered=report.dead_lettered,
            committed=committed,
            dead_letter_stages=sorted({r.stage for r in rejected}),
            **{f"{k}_seconds": round(v, 4) for k, v in report.stage_seconds.items()},
        )
        return report

    def _validate(self, records: list[Any], rejected: list[Rejected]) -> list[Accepted]:
        accepted = []
        for record in records:
            try:
                post = parse_post(record.value)
                if record.key != post.post_id.encode():
                    raise KeyMismatch(
                        f"the Kafka key {_shown(record.key)} is not the post_id {post.post_id!r}: "
                        "producers must key every post by its post_id"
                    )
                accepted.append(Accepted(record, post))
            except PostError as exc:
                rejected.append(Rejected(record, exc, exc.stage))
            except Exception as exc:  # noqa: BLE001 - one unforeseen input must never crash-loop the worker
                rejected.append(Rejected(record, MalformedPost(f"{type(exc).__name__}: {str(exc)[:200]}"), "validate"))
        return accepted

    def _fetch(self, accepted: list[Accepted], rejected: list[Rejected]) -> list[Accepted]:
        if not accepted:
            return []
        started = time.monotonic()
        loaded = self.images.load_many([a.post.image for a in accepted])
        per_item = (time.monotonic() - started) / len(accepted)
        ok = []
        for item, image in zip(accepted, loaded):
            if isinstance(image, BaseException):
                rejected.append(Rejected(item.record, image, getattr(image, "stage", "fetch")))
            else:
                item.image, item.fetch_seconds = image, per_item
                ok.append(item)
        return ok

    def _analyze(self, accepted: list[Accepted], rejected: list[Rejected]) -> list[tuple[Accepted, AnalysisResultV2]]:
        if not accepted:
            return []
        started = time.monotonic()
        texts = [PostText(a.post.text, a.post.lang) for a in accepted]
        analyses = self._retry_until_done(
            "analyze",
            lambda: self._analyze_isolating([a.image.rgb for a in accepted], texts),
            self.metrics.backend_errors,
        )
        per_item = (time.monotonic() - started) / len(accepted)
        now = datetime.now(UTC)
        results = []
        bounds = self.settings.event_time_bounds()
        for item, analysis in zip(accepted, analyses):
            if isinstance(analysis, BaseException):
                rejected.append(Rejected(item.record, analysis, "analyze"))
                continue
            timings = StageTimings(
                fetch_seconds=item.fetch_seconds,
                analyze_seconds=per_item,
                total_seconds=item.fetch_seconds + per_item,
            )
            when = bounds.bound(item.post.created_at, now)
            if when.clamped:
                self.metrics.event_time_clamped.labels(when.reason).inc()
            result = AnalysisResultV2.from_analysis(
                item.post, in_source_pixels(analysis, item.image), analyzed_at=now,
                model_versions=self.analyzer.versions, timings=timings, created_at=when.at,
                thumbnail=thumbnail_or_none(item.image.rgb),  # for the dashboard; stored, not published
            )  # fmt: skip
            results.append((item, result))
        return results

    def _store(self, done: list[tuple[Accepted, AnalysisResultV2]], rejected: list[Rejected]) -> list[AnalysisResultV2]:
        """Store the batch; dead-letter what the store refuses. A post_id repeated within the batch is
        written in a later round, so the store compares it with the first like any reused post_id."""
        stored = []
        for round_ in _rounds_by_post_id(done):
            results = [result for _, result in round_]
            try:
                self._retry_until_done(
                    "store", lambda results=results: self.store.write(results), self.metrics.store_errors
                )
                stored += round_
            except ItemsRejected as exc:
                refused = set(exc.ids)
                for item, result in round_:
                    if result.post_id in refused:
                        rejected.append(Rejected(item.record, exc.only(result.post_id), "store"))
                    else:
                        stored.append((item, result))
        return [result for _, result in stored]

    def _analyze_isolating(self, images: list[np.ndarray], texts: list[PostText]) -> list[Any]:
        """Analyse the batch; if one input breaks it, analyse one by one so only that input is rejected."""
        try:
            return list(self.analyzer.analyze(images, texts))
        except TransientError:
            raise
        except Exception as batch_error:  # noqa: BLE001 - isolate the poison input below
            log.warning("batch analysis failed, isolating inputs", error=str(batch_error))
            out: list[Any] = []
            for image, text in zip(images, texts):
                try:
                    out.extend(self.analyzer.analyze([image], [text]))
                except TransientError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    out.append(AnalysisFailed(f"{type(exc).__name__}: {exc}"))
            return out

    def _produce(self, results: list[AnalysisResultV2], rejected: list[Rejected]) -> None:
        futures = []
        for result in results:
            futures.append(
                self.producer.send(
                    self.settings.results_topic,
                    key=result.post_id.encode(),
                    value=result.model_dump_json(exclude={"thumbnail"}).encode(),
                )
            )
        for item in rejected:
            futures.append(
                self.producer.send(
                    self.settings.dlq_topic, key=item.record.key, value=item.record.value, headers=dlq_headers(item)
                )
            )
        self.producer.flush(timeout=30)
        for fut in futures:
            fut.get(timeout=30)  # raises the KafkaError of any message that was not acknowledged

    def _commit(self, records: list[Any]) -> bool:
        offsets = commit_offsets(records)
        commit = lambda: self.consumer.commit(offsets=offsets, timeout_ms=self.settings.commit_timeout_ms)  # noqa: E731
        try:
            # A broker restart right here must not kill the worker: the results are stored and
            # published, so wait for the broker like any other stage instead of re-reading the batch.
            self._retry_until_done("commit", commit, self.metrics.commit_errors)
            return True
        except _REBALANCED as exc:
            # The group rebalanced while we held the batch: the new owner re-reads it, and the
            # idempotent store write makes that harmless.
            self.metrics.commit_errors.inc()
            log.warning(
                "commit failed after rebalance; batch will be re-read by the new owner",
                error=f"{type(exc).__name__}: {exc}",
            )
            return False

    # ---- helpers ---------------------------------------------------------------------------------

    def _retry_until_done(self, stage: str, fn: Callable[[], Any], errors_metric) -> Any:
        """Retry a TransientError (an outage, whichever adapter reports it) with capped backoff, keeping
        group membership alive meanwhile; every other error goes straight up.

        Nothing is committed while this waits, so a crash or shutdown here simply re-reads the batch.
        """
        delay = 0.2
        started = time.monotonic()
        paused = False
        try:
            while True:
                try:
                    return fn()
                except TransientError as exc:
                    errors_metric.inc()
                    waited = time.monotonic() - started
                    if waited > self.settings.store_retry_max_s:
                        raise
                    log.warning(
                        f"{stage} unavailable, retrying",
                        error=f"{type(exc).__name__}: {exc}",
                        waited_s=round(waited, 1),
                        next_retry_s=round(delay, 2),
                    )
                    if not paused:
                        self.consumer.pause(*self.consumer.assignment())
                        paused = self.waiting = True
                    self._sleep_keeping_membership(delay)
                    if self.stop_event.is_set():
                        raise ShutdownDuringRetry(
                            f"shutdown while {stage} was unavailable; batch not committed"
                        ) from exc
                    delay = min(delay * 2, 5.0)
        finally:
            if paused:
                self.waiting = False
                self.consumer.resume(*self.consumer.assignment())

    def _sleep_keeping_membership(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop_event.is_set():
            self.on_tick()
            polled = self._poll(timeout_ms=min(500, max(1, int((end - time.monotonic()) * 1000))))
            # A rebalance during the wait can hand us partitions that are not paused; whatever they
            # returned must be read again later, not dropped (dropping it would let a later commit skip it).
            self.consumer.pause(*self.consumer.assignment())
            for tp, records in polled.items():
                if records:
                    self.consumer.seek(tp, records[0].offset)
            self._update_lag()  # lag keeps growing during an outage; the gauge must show it

    def _update_lag(self, every_s: float = 5.0) -> None:
        now = time.monotonic()
        if now - self._last_lag_check < every_s:
            return
        self._last_lag_check = now
        try:
            self._lag_total = None
            assignment = self.consumer.assignment()
            if not assignment:
                return
            ends = self.consumer.end_offsets(list(assignment))
            total = 0
            for tp in assignment:
                position = self.consumer.position(tp)
                lag = max(0, ends.get(tp, position) - position)
                self.metrics.consumer_lag.labels(str(tp.partition)).set(lag)
                total += lag
            self._lag_total = total
        except KafkaError as exc:
            log.debug("lag update failed", error=str(exc))

    @contextmanager
    def _stage(self, name: str, report: BatchReport) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            report.stage_seconds[name] = elapsed
            self.metrics.stage_duration.labels(name).observe(elapsed)


class ShutdownDuringRetry(RuntimeError):
    pass


class _PauseWhileWaiting(ConsumerRebalanceListener):
    """Partitions assigned while the worker waits out an outage are paused before anything is fetched
    from them (kafka-python 3.0.12 can lose track of parsed buffers of partitions paused afterwards)."""

    def __init__(self, worker: AnalyzerWorker) -> None:
        self.worker = worker

    def on_partitions_revoked(self, revoked) -> None:
        pass

    def on_partitions_assigned(self, assigned) -> None:
        if self.worker.waiting and assigned:
            self.worker.consumer.pause(*assigned)
