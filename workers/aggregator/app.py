"""The aggregator: a faust-streaming app over ``post-sentiment`` -> windowed mood state -> alerts.

Run it with ``faust -A workers.aggregator worker -l info`` (settings from MOODWATCH_* env) or
``run_aggregator(settings)`` (``moodwatch aggregator``).

Topology (one faust app, consumer group = ``aggregator_app_id``)::

    post-sentiment (key post_id)  --agent by_channel-->  <app>-by-channel (key channel, internal)
    <app>-by-channel  --agent aggregate-->  table "state" (changelog <app>-state-changelog)
                                         -> alerts (key alert_id)
    alerts  --agent deliver-->  Elasticsearch alerts index (_id = alert_id) + webhook

``by_channel`` repartitions by channel (the results topic is keyed by post_id), so one worker owns
all of a channel's windows and the table's changelog partition is the stream's partition. Records
that fail to decode are counted and skipped (a value that crashes an agent would crash it again
after every restart). The window/detection logic is ``workers.aggregator.detection.MoodAggregator`` over the
faust table; a step's state writes are applied only after its alerts are acknowledged by the
broker, so a crash re-raises an alert (same ``alert_id``) rather than losing it.

The tansu trap, and what is fixed here: tansu 0.6 answers ListOffsets(latest) with the base offset
of the partition's last record batch + 1 instead of the last offset + 1 (a fetch response's high
watermark is right). faust's table recovery reads each changelog partition up to
``end_offsets() - 1`` and then declares the table recovered: records after the first one of the
last batch stay in faust's recovery buffer and are never applied, so a restarted worker lost the
newest state changes (up to a whole producer batch; "one record short" with a batch of two) and
e.g. raised the same alert again. ``_VerifiedEndConsumerThread`` replaces faust's end offsets by
reading each partition's tail from the reported end - 1 to the real end before recovery starts
(on real Kafka that read returns one record and changes nothing). See ``verified_end_offsets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import faust
from faust import streams as faust_streams
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pydantic import AwareDatetime, BaseModel, ConfigDict

from schemas.emotions import Polarity
from schemas.posts import Identifier
from schemas.results import EmotionDistribution
from workers.aggregator.settings import AggregatorSettings
from workers.aggregator.alerts_out import AlertOutputMetrics, AlertOutputs, alert_record, parse_alert
from workers.common.logs import configure_logging, get_logger
from workers.aggregator.detection import MoodAggregator, Observation

log = get_logger("moodwatch.aggregator")

__all__ = ["AggregatorApp", "AggregatorMetrics", "app", "create_app", "run_aggregator", "verified_end_offsets"]


# --- metrics ----------------------------------------------------------------------------------


@dataclass
class AggregatorMetrics:
    registry: CollectorRegistry
    records: Counter
    observations: Counter
    alerts: Counter
    step_duration: Histogram
    end_offset_corrections: Counter
    watermark: Gauge
    state_writes: Counter
    offset_jumps: Counter
    repaired: Counter
    redeliveries: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> "AggregatorMetrics":
        registry = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=registry,
            records=Counter(
                "moodwatch_aggregator_records",
                "Records read by the aggregator by topic role (results, by_channel) and outcome (ok, invalid)",
                ["source", "outcome"],
                registry=registry,
            ),
            observations=Counter(
                "moodwatch_aggregator_observations",
                "Posts applied to windows by status (accepted, duplicate, late)",
                ["status"],
                registry=registry,
            ),
            alerts=Counter("moodwatch_alerts_raised", "Alerts raised by kind", ["kind"], registry=registry),
            step_duration=Histogram(
                "moodwatch_aggregator_step_seconds",
                "Time per post to apply a batch to the windows and run detection (batch time / posts)",
                buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
                registry=registry,
            ),
            end_offset_corrections=Counter(
                "moodwatch_aggregator_end_offset_corrections",
                "Changelog partitions whose broker-reported end offset was short and was corrected before recovery",
                registry=registry,
            ),
            watermark=Gauge(
                "moodwatch_aggregator_event_time_seconds",
                "Newest event time (created_at, epoch seconds) applied by this worker",
                registry=registry,
            ),
            offset_jumps=Counter(
                "moodwatch_aggregator_offset_jumps",
                "Forward offset jumps (skipped records) seen by an agent, by source topic role",
                ["source"],
                registry=registry,
            ),
            repaired=Counter(
                "moodwatch_aggregator_repaired_records",
                "Skipped records re-read and processed after an offset jump",
                ["source"],
                registry=registry,
            ),
            redeliveries=Counter(
                "moodwatch_aggregator_redeliveries",
                "Records delivered again at or below an offset already seen (harmless: deduplicated)",
                ["source"],
                registry=registry,
            ),
            state_writes=Counter(
                "moodwatch_aggregator_state_writes",
                "Table writes (changelog records, tombstones included) after coalescing each batch",
                registry=registry,
            ),
        )


# --- the end-offset fix -----------------------------------------------------------------------


async def verified_end_offsets(
    reported: Mapping[Any, int | None],
    make_consumer: Callable[[], Any],
    *,
    timeout_s: float = 10.0,
    on_correction: Callable[[Any, int, int], None] | None = None,
) -> dict[Any, int | None]:
    """The real end offset (last offset + 1) of each partition, whatever ListOffsets said.

    Reads every non-empty partition from ``reported - 1`` with a group-less aiokafka consumer
    until its position reaches the fetch response's high watermark; returns the max of the
    reported end, the last offset read + 1 and that high watermark. On a correct broker this
    reads one record per partition. ``make_consumer`` returns an unstarted AIOKafkaConsumer.
    """
    import aiokafka

    result: dict[Any, int | None] = dict(reported)
    todo = {tp: end for tp, end in reported.items() if end}
    if not todo:
        return result
    # aiokafka insists on its own TopicPartition type; faust's TP is a look-alike
    native = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp in todo}
    consumer = make_consumer()
    await consumer.start()
    try:
        consumer.assign(list(native))
        for atp, tp in native.items():
            consumer.seek(atp, max(0, todo[tp] - 1))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        pending = set(native)
        while pending and loop.time() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=200)
            for atp, messages in batches.items():
                if messages:
                    tp = native[atp]
                    result[tp] = max(result[tp] or 0, messages[-1].offset + 1)
            for atp in list(pending):
                tp = native[atp]
                hw = consumer.highwater(atp)
                if hw is None:
                    continue
                result[tp] = max(result[tp] or 0, hw)
                if await consumer.position(atp) >= result[tp]:
                    pending.discard(atp)
        if pending:
            log.warning("end_offset_probe_timeout", partitions=sorted(str(native[atp]) for atp in pending))
    finally:
        await consumer.stop()
    for tp, end in todo.items():
        if (result[tp] or 0) > end:
            log.info("end_offset_corrected", topic=tp.topic, partition=tp.partition, reported=end, actual=result[tp])
            if on_correction:
                on_correction(tp, end, result[tp])
    return result


def side_consumer(app: Any, purpose: str) -> Any:
    """An unstarted, group-less AIOKafkaConsumer on the app's brokers and credentials."""
    import aiokafka

    conf = app.conf
    auth = faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context)
    transport = app.transport
    return aiokafka.AIOKafkaConsumer(
        bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{conf.broker_client_id}-{purpose}",
        isolation_level="read_uncommitted",
        **auth,
    )


class GapRepair:
    """Re-reads the records a faust stream skipped.

    faust 0.15.3 resumes the stream partitions *before* seeking them to the committed offsets when
    recovery completes (and the fetcher is already running then); in ~1 of 5 restarts on this
    machine the agent then saw an offset jump forward (e.g. 537 -> 539) and the skipped record was
    never delivered: a lost post. Our topics are neither compacted nor transactional, so within a
    partition every offset exists; a forward jump is a skip. This fetches the skipped range with a
    group-less consumer so the agent can process it before the record that revealed the jump
    (re-deliveries, i.e. backward jumps, are harmless: posts are deduplicated by post_id).
    """

    def __init__(self, app: Any, metrics: "AggregatorMetrics", role: str, *, timeout_s: float = 10.0) -> None:
        self.app = app
        self.metrics = metrics
        self.role = role
        self.timeout_s = timeout_s
        self.last: dict[Any, int] = {}
        self._consumer: Any = None

    def gap(self, tp: Any, offset: int) -> tuple[int, int] | None:
        """Record ``offset`` as delivered; return the skipped range [start, stop) if it jumped."""
        prev = self.last.get(tp)
        if prev is None or offset > prev:
            self.last[tp] = offset
        if prev is not None and offset > prev + 1:
            return prev + 1, offset
        if prev is not None and offset <= prev:
            self.metrics.redeliveries.labels(source=self.role).inc()
        return None

    async def fetch(self, tp: Any, start: int, stop: int) -> list[Any]:
        self.metrics.offset_jumps.labels(source=self.role).inc()
        log.warning("offset_jump_repair", source=self.role, topic=tp.topic, partition=tp.partition, start=start, stop=stop)
        if self._consumer is None:
            self._consumer = side_consumer(self.app, f"gap-{self.role}")
            await self._consumer.start()
        import aiokafka

        consumer = self._consumer
        atp = aiokafka.TopicPartition(tp.topic, tp.partition)  # faust's TP is not aiokafka's
        consumer.assign([atp])
        consumer.seek(atp, start)
        out: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while loop.time() < deadline:
            batch = await consumer.getmany(atp, timeout_ms=200)
            for message in batch.get(atp, []):
                if start <= message.offset < stop:
                    out.append(message)
            if (out and out[-1].offset >= stop - 1) or await consumer.position(atp) >= stop:
                break
        missing = (stop - start) - len(out)
        if missing:
            log.error("offset_jump_unrepaired", source=self.role, partition=tp.partition, missing=missing)
        self.metrics.repaired.labels(source=self.role).inc(len(out))
        return out

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class _VerifiedEndConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust's aiokafka consumer thread whose ``highwaters`` (used by table recovery) are verified."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        app = self.app
        settings: AggregatorSettings = app.moodwatch_settings  # type: ignore[attr-defined]
        metrics: AggregatorMetrics | None = getattr(app, "moodwatch_metrics", None)

        def make_consumer():
            return side_consumer(app, "end-probe")

        def corrected(tp, was, now):
            if metrics:
                metrics.end_offset_corrections.inc()

        return await verified_end_offsets(
            reported,
            make_consumer,
            timeout_s=settings.aggregator_end_offset_probe_timeout_s,
            on_correction=corrected,
        )  # type: ignore[return-value]


class _VerifiedEndConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _VerifiedEndConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _VerifiedEndTransport(faust_aiokafka.Transport):
    Consumer = _VerifiedEndConsumer


class _SeekFirstRecovery(Recovery):
    """faust's Recovery, but stream partitions are seeked to their committed offsets *before* they
    are resumed (faust 0.15.3 resumes first, while its fetcher already runs, then seeks)."""

    async def _seek_then_resume(self, coro_fn: Callable[[], Any]) -> Any:
        consumer = self.app.consumer
        deferred: list[set] = []
        original_resume, original_seek = consumer.resume_partitions, consumer.perform_seek

        def resume_later(tps: Any) -> None:
            deferred.append(set(tps))

        async def seek_then_resume() -> None:
            await original_seek()
            while deferred:
                original_resume(deferred.pop(0))

        consumer.resume_partitions = resume_later  # type: ignore[method-assign]
        consumer.perform_seek = seek_then_resume  # type: ignore[method-assign]
        try:
            return await coro_fn()
        finally:
            del consumer.resume_partitions, consumer.perform_seek  # back to the class methods
            while deferred:  # e.g. an empty assignment: nothing was seeked
                original_resume(deferred.pop(0))

    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        await self._seek_then_resume(lambda: super(_SeekFirstRecovery, self).on_recovery_completed(generation_id))

    async def _resume_streams(self, generation_id: int = 0) -> None:
        await self._seek_then_resume(lambda: super(_SeekFirstRecovery, self)._resume_streams(generation_id))


class _SeekFirstTableManager(TableManager):
    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _SeekFirstRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery


# --- the app ----------------------------------------------------------------------------------


class AggregatorApp(faust.App):
    """faust.App that knows its settings, creates the external topics first and (by default)
    verifies changelog end offsets before table recovery."""

    def __init__(self, settings: AggregatorSettings, metrics: AggregatorMetrics, **kwargs: Any) -> None:
        self.moodwatch_settings = settings
        self.moodwatch_metrics = metrics
        super().__init__(**kwargs)

    def _new_transport(self):
        if self.moodwatch_settings.aggregator_verify_end_offsets:
            return _VerifiedEndTransport(self.conf.broker_consumer, self)
        return super()._new_transport()

    async def on_first_start(self) -> None:
        await super().on_first_start()
        from workers.adapters.kafka_io import ensure_topics

        s = self.moodwatch_settings
        # Brokers that auto-create would pick their own partition count: create what we read first.
        await asyncio.to_thread(
            ensure_topics, s, [s.results_topic, s.alerts_topic], partitions=s.aggregator_partitions,
            replication=s.aggregator_replication,
        )  # fmt: skip


def _broker_urls(settings: AggregatorSettings) -> list[str]:
    return [f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()]


def _credentials(settings: AggregatorSettings) -> Any:
    proto = settings.kafka_security_protocol
    if proto == "PLAINTEXT":
        return None
    ssl_context = None
    if proto in ("SSL", "SASL_SSL"):
        import ssl

        ssl_context = ssl.create_default_context(cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None)
    if proto == "SSL":
        return faust.SSLCredentials(ssl_context)
    password = settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=password,
        mechanism=settings.kafka_sasl_mechanism or "PLAIN",
        ssl_context=ssl_context,
    )


class _ResultFields(BaseModel):
    """The AnalysisResultV1 fields the aggregator reads, validated with the contract's own types
    (the rest of the record is ignored: validating regions and evidence here cost ~3x more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: Literal[1]
    post_id: Identifier
    channel: Identifier
    created_at: AwareDatetime
    polarity: Polarity
    emotions: EmotionDistribution


@contextlib.contextmanager
def _as_current_event(event: Any):
    """Make ``event`` faust's current event in this task (tables pick the changelog partition from
    it). Only the context variable is touched, never the stream's own ``current_event`` attribute,
    which the background take() buffer reads."""
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


def decode_result(raw: bytes | None) -> Observation:
    """A post-sentiment value -> Observation; raises ValueError on anything invalid."""
    if raw is None:
        raise ValueError("tombstone")
    return Observation.from_result(_ResultFields.model_validate_json(raw))


def create_app(settings: AggregatorSettings | None = None, *, metrics: AggregatorMetrics | None = None) -> AggregatorApp:
    """Build the faust app (agents, table, topics). Connects to nothing until the worker starts."""
    settings = settings or AggregatorSettings()
    metrics = metrics or AggregatorMetrics.create()
    cfg = settings.detector_config()
    partitions = settings.aggregator_partitions
    session_timeout = settings.kafka_session_timeout_ms / 1000
    app = AggregatorApp(
        settings,
        metrics,
        id=settings.aggregator_app_id,
        broker=_broker_urls(settings),
        broker_credentials=_credentials(settings),
        store=settings.aggregator_store,
        datadir=str(settings.aggregator_data_dir),
        topic_partitions=partitions,
        topic_replication_factor=settings.aggregator_replication,
        topic_allow_declare=True,
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=max(1.0, session_timeout / 3),
        broker_commit_interval=settings.aggregator_commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        web_bind="127.0.0.1",
        table_standby_replicas=0,
        autodiscover=False,
        TableManager=_SeekFirstTableManager,
    )

    results_topic = app.topic(settings.results_topic, key_serializer="raw", value_serializer="raw")
    by_channel = app.topic(
        f"{settings.aggregator_app_id}-by-channel",
        partitions=partitions,
        replicas=settings.aggregator_replication,
        internal=True,
        key_serializer="raw",
        value_serializer="raw",
    )
    alerts_topic = app.topic(settings.alerts_topic, key_serializer="raw", value_serializer="raw")
    state = app.Table(
        "state",
        default=None,
        partitions=partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="windows, dedup sets and detector state per channel (see workers.aggregator.detection.MoodAggregator)",
    )
    app.moodwatch_state = state  # type: ignore[attr-defined]
    aggregator = MoodAggregator(state, cfg)  # type: ignore[arg-type]
    app.moodwatch_aggregator = aggregator  # type: ignore[attr-defined]

    results_gaps = GapRepair(app, metrics, "results")

    async def forward(raw: bytes | None) -> None:
        try:
            obs = decode_result(raw)
        except Exception as exc:  # never let a bad record crash the agent (restart loop)
            metrics.records.labels(source="results", outcome="invalid").inc()
            log.warning("result_invalid", error=str(exc)[:300])
            return
        metrics.records.labels(source="results", outcome="ok").inc()
        await by_channel.send(key=obs.channel.encode(), value=json.dumps(obs.to_dict()).encode(), force=True)

    @app.agent(results_topic, name="by_channel")
    async def by_channel_agent(stream):
        async for event in stream.events():
            gap = results_gaps.gap(event.message.tp, event.message.offset)
            if gap is not None:
                for message in await results_gaps.fetch(event.message.tp, *gap):
                    await forward(message.value)
            await forward(event.value)

    newest = [0.0]
    by_channel_gaps = GapRepair(app, metrics, "by_channel")

    @app.agent(by_channel, name="aggregate")
    async def aggregate_agent(stream):
        # Batches: writes to the same key within a batch become one changelog record. Each
        # partition's part of a batch is applied with one of its own events as the current event,
        # so the table writes land in the changelog partition of the channel's stream partition.
        batches = stream.take_events(settings.aggregator_batch_max, within=settings.aggregator_batch_wait_s)
        async for events in batches:
            by_partition: dict[int, list[Any]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event)
            for partition_events in by_partition.values():
                values: list[bytes | None] = []
                for event in sorted(partition_events, key=lambda e: e.message.offset):
                    gap = by_channel_gaps.gap(event.message.tp, event.message.offset)
                    if gap is not None:
                        values.extend(m.value for m in await by_channel_gaps.fetch(event.message.tp, *gap))
                    values.append(event.value)
                observations = []
                for value in values:
                    try:
                        observations.append(Observation.from_dict(json.loads(value)))
                    except Exception as exc:  # a bad record must not crash the agent
                        metrics.records.labels(source="by_channel", outcome="invalid").inc()
                        log.warning("observation_invalid", error=str(exc)[:300])
                if not observations:
                    continue
                t0 = time.perf_counter()
                result = aggregator.process_many(observations)
                for alert in result.alerts:
                    key, value, headers = alert_record(alert)
                    fut = await alerts_topic.send(key=key, value=value, headers=headers, force=True)
                    await fut  # the broker has the alert before any state of this batch is written
                    metrics.alerts.labels(kind=alert.kind).inc()
                    log.warning(
                        "alert_raised", alert_id=alert.alert_id, channel=alert.channel, kind=alert.kind,
                        window_start=alert.window_start.isoformat(), p_value=alert.p_value, message=alert.message,
                    )  # fmt: skip
                with _as_current_event(partition_events[-1]):
                    aggregator.apply(result)
                for status, n in result.statuses.items():
                    metrics.observations.labels(status=status).inc(n)
                metrics.step_duration.observe((time.perf_counter() - t0) / len(observations))
                metrics.state_writes.inc(len(result.writes))
                ts = max(o.ts for o in observations)
                if ts > newest[0]:
                    newest[0] = ts
                    metrics.watermark.set(ts)

    outputs_holder: dict[str, AlertOutputs] = {}

    @app.agent(alerts_topic, name="deliver")
    async def deliver_agent(stream):
        async for raw in stream:
            try:
                alert = parse_alert(raw)
            except Exception as exc:
                metrics.records.labels(source="alerts", outcome="invalid").inc()
                log.warning("alert_record_invalid", error=str(exc)[:300])
                continue
            outputs = outputs_holder.get("o")
            if outputs is None:
                outputs = outputs_holder["o"] = await asyncio.to_thread(
                    AlertOutputs, settings, metrics=AlertOutputMetrics.create(metrics.registry)
                )
            await asyncio.to_thread(outputs.deliver, alert)

    health_holder: dict[str, Any] = {}

    @app.task
    async def start_health() -> None:
        port = settings.aggregator_metrics_port if settings.aggregator_metrics_port is not None else settings.metrics_port
        if not port:
            return
        from workers.common.health import HealthState, serve_health, tcp_check

        state_ = HealthState(stale_after_s=60)
        state_.add_check("kafka", tcp_check(settings.kafka_bootstrap))
        if settings.alerts_to_elasticsearch:
            from workers.adapters.elastic import make_es_client, ping

            es = make_es_client(settings)
            state_.add_check("elasticsearch", lambda: ping(es))
        health_holder["state"] = state_
        health_holder["server"] = serve_health(state_, settings.metrics_host, port, metrics.registry)

    @app.timer(interval=5.0)
    async def heartbeat() -> None:
        state_ = health_holder.get("state")
        if state_ is not None:
            state_.tick()

    return app


def run_aggregator(settings: AggregatorSettings | None = None) -> None:
    """Run the aggregator worker in this process until SIGINT/SIGTERM (``moodwatch aggregator``)."""
    settings = settings or AggregatorSettings()
    configure_logging(settings.log_level, settings.log_json)
    worker_app = create_app(settings)
    worker = faust.Worker(worker_app, loglevel=settings.aggregator_log_level, quiet=True)
    worker.execute_from_commandline()


# `faust -A workers.aggregator worker` imports this module and uses `app`.
app = create_app()
