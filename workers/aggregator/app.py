"""The aggregator: a faust-streaming app over ``post-sentiment`` -> windowed mood state -> alerts.

Run it with ``faust -A workers.aggregator worker -l info`` (settings from MOODWATCH_* env) or
``run_aggregator(settings)`` (``moodwatch aggregator``).

Topology (one faust app, consumer group = ``aggregator_app_id``)::

    post-sentiment (key post_id)  --agent by_channel-->  <app>-by-channel (key channel, internal)
    <app>-by-channel  --agent aggregate-->  table "state" (changelog <app>-state-changelog)
                                         -> alerts (key alert_id)
    alerts  --agent deliver-->  Elasticsearch alerts index (_id = alert_id) + webhook

The agents only read streams; what they do with the records is in ``repartition`` (by_channel),
``step`` (aggregate) and ``delivery`` (deliver). Records that fail to decode are counted and
skipped (a value that crashes an agent would crash it again after every restart). The faust and
tansu problems worked around on the way are in ``faust_fixes``. A worker that is ready but takes
nothing while records wait exits with 75 for a restart (``stall``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust

from workers.aggregator.agents import (
    aggregate_agent,
    apply_in_partition,
    by_channel_agent,
    deliver_agent,
    publish_acked,
    send_forced,
)
from workers.aggregator.delivery import AlertDelivery
from workers.aggregator.detection import MoodAggregator
from workers.aggregator.faust_config import faust_options
from workers.aggregator.faust_fixes import GapRepair, SnapshotFetchTransport, VerifiedEndTransport, side_consumer
from workers.aggregator.health import HealthEndpoint
from workers.aggregator.metrics import AggregatorMetrics
from workers.aggregator.repartition import Repartition
from workers.aggregator.settings import AggregatorSettings
from workers.aggregator.stall import AgentProgress, FaustConsumerView, StallWatchdog
from workers.aggregator.step import AggregationStep
from workers.common.logs import configure_logging

__all__ = ["AggregatorApp", "app", "create_app", "run_aggregator"]


class AggregatorApp(faust.App):
    """faust.App that knows its settings, creates the external topics first and (by default)
    verifies changelog end offsets before table recovery."""

    moodwatch_state: Any  # the faust table behind moodwatch_aggregator
    moodwatch_aggregator: MoodAggregator

    def __init__(self, settings: AggregatorSettings, metrics: AggregatorMetrics, **kwargs: Any) -> None:
        self.moodwatch_settings = settings
        self.moodwatch_metrics = metrics
        super().__init__(**kwargs)

    def _new_transport(self):
        if self.moodwatch_settings.aggregator_verify_end_offsets:
            return VerifiedEndTransport(self.conf.broker_consumer, self)
        return SnapshotFetchTransport(self.conf.broker_consumer, self)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        from workers.adapters.kafka_io import ensure_topics

        s = self.moodwatch_settings
        # Brokers that auto-create would pick their own partition count: create what we read first.
        await asyncio.to_thread(
            ensure_topics, s, [s.results_topic, s.alerts_topic], partitions=s.aggregator_partitions,
            replication=s.aggregator_replication,
        )  # fmt: skip


def create_app(
    settings: AggregatorSettings | None = None, *, metrics: AggregatorMetrics | None = None
) -> AggregatorApp:
    """Build the faust app (agents, table, topics). Connects to nothing until the worker starts."""
    s = settings or AggregatorSettings()
    metrics = metrics or AggregatorMetrics.create()
    app = AggregatorApp(s, metrics, **faust_options(s))

    results = app.topic(s.results_topic, key_serializer="raw", value_serializer="raw")
    by_channel = app.topic(
        f"{s.aggregator_app_id}-by-channel", partitions=s.aggregator_partitions, replicas=s.aggregator_replication,
        internal=True, key_serializer="raw", value_serializer="raw",
    )  # fmt: skip
    alerts = app.topic(s.alerts_topic, key_serializer="raw", value_serializer="raw")
    app.moodwatch_state = app.Table(
        "state", default=None, partitions=s.aggregator_partitions,
        schema=faust.Schema(key_serializer="json", value_serializer="json"),
        help="windows, dedup sets and detector state per channel (see workers.aggregator.detection.MoodAggregator)",
    )  # fmt: skip
    thresholds = channel_thresholds(s)
    detector = app.moodwatch_aggregator = MoodAggregator(
        app.moodwatch_state, s.detector_config(), overrides=thresholds.overrides if thresholds else None
    )

    repartition = Repartition(send_forced(by_channel), metrics, s.event_time_bounds())
    step = AggregationStep(detector, publish=publish_acked(alerts), apply=apply_in_partition(detector), metrics=metrics)
    health = HealthEndpoint(s, metrics)
    progress = AgentProgress()

    app.agent(results, name="by_channel")(by_channel_agent(repartition, GapRepair(app, metrics, "results"), progress))
    app.agent(by_channel, name="aggregate")(aggregate_agent(
        step, GapRepair(app, metrics, "by_channel"), progress, batch_max=s.aggregator_batch_max,
        batch_wait_s=s.aggregator_batch_wait_s,
    ))  # fmt: skip
    app.agent(alerts, name="deliver")(deliver_agent(AlertDelivery(s, metrics), progress))
    app.task(health.start)
    if thresholds is not None:

        async def read_channel_thresholds() -> None:  # first read, then a refresh thread
            await asyncio.to_thread(thresholds.start)

        app.task(read_channel_thresholds)
    app.timer(interval=5.0, name="heartbeat")(health.heartbeat)
    if s.aggregator_stall_exit_s:
        view = FaustConsumerView(app, [results.get_topic_name(), by_channel.get_topic_name(), alerts.get_topic_name()],
                                 lambda: side_consumer(app, "stall-watch"))  # fmt: skip
        watchdog = StallWatchdog(view, progress, s.aggregator_stall_exit_s, metrics=metrics, on_stall=health.stalled)
        app.timer(interval=watchdog.interval_s, name="stall-watchdog")(watchdog.check)

        @app.on_before_shutdown.connect
        async def close_stall_watch(sender: Any, **kwargs: Any) -> None:
            await view.close()

    return app


def channel_thresholds(settings: AggregatorSettings) -> Any:
    """The reader of the per-channel thresholds the dashboard writes (None when turned off). Connects on start."""
    if not settings.aggregator_thresholds_refresh_s:
        return None
    from workers.adapters.elastic import make_es_client
    from workers.adapters.thresholds import ChannelThresholds

    return ChannelThresholds(make_es_client(settings), settings.es_thresholds_index,
                             refresh_s=settings.aggregator_thresholds_refresh_s)  # fmt: skip


def run_aggregator(settings: AggregatorSettings | None = None) -> None:
    """Run the aggregator worker in this process until SIGINT/SIGTERM (``moodwatch aggregator``)."""
    settings = settings or AggregatorSettings()
    configure_logging(settings.log_level, settings.log_json)
    worker_app = create_app(settings)
    worker = faust.Worker(worker_app, loglevel=settings.aggregator_log_level, quiet=True)
    worker.execute_from_commandline()


# `faust -A workers.aggregator worker` imports this module and uses `app`.
app = create_app()
