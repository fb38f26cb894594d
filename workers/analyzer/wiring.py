"""Wiring: build a real AnalyzerWorker from settings (Kafka, Elasticsearch, images, backend, health).

The concrete adapters are plugged in here; the Kafka clients are wrapped so a broker outage reaches the
worker as a TransientError (workers/analyzer/ports.py), like an outage of the store or the model backend.
"""

from __future__ import annotations

from typing import Any

from workers.adapters.elastic import ResultSink, install_templates, make_es_client, ping
from workers.adapters.images import ImageLoader
from workers.adapters.kafka_io import (
    OutageAwareConsumer,
    OutageAwareProducer,
    ensure_topics,
    make_consumer,
    make_producer,
)
from workers.analyzer.backends import build_analyzer
from workers.analyzer.metrics import WorkerMetrics, default_metrics
from workers.analyzer.settings import AnalyzerSettings
from workers.analyzer.worker import AnalyzerWorker
from workers.common.health import HealthState, serve_health, tcp_check
from workers.common.logs import get_logger

log = get_logger("moodwatch.runtime")

# The worker's own retry loop (which keeps the consumer-group membership alive) handles long
# outages; the sink only rides out short blips itself.
SINK_RETRY_S = 10.0


def build_worker(
    settings: AnalyzerSettings,
    *,
    analyzer: Any = None,
    metrics: WorkerMetrics | None = None,
    health: HealthState | None = None,
    create_topics: bool = True,
) -> AnalyzerWorker:
    es = make_es_client(settings)
    install_templates(es, settings)
    if create_topics:
        ensure_topics(settings, [settings.posts_topic, settings.results_topic, settings.dlq_topic])
    analyzer = analyzer if analyzer is not None else build_analyzer(settings)
    metrics = metrics or default_metrics()
    if health is not None:
        health.add_check("kafka", tcp_check(settings.kafka_bootstrap))
        health.add_check("elasticsearch", lambda: ping(es))
        health.add_check("model_backend", analyzer.ready)
    return AnalyzerWorker(
        settings,
        consumer=OutageAwareConsumer(
            make_consumer(
                settings,
                group_id=settings.consumer_group,
                client_id="moodwatch-analyzer",
                max_poll_records=settings.batch_max_posts,
                max_poll_interval_ms=settings.kafka_max_poll_interval_ms,
            )
        ),
        producer=OutageAwareProducer(make_producer(settings)),
        analyzer=analyzer,
        images=ImageLoader(settings),
        store=ResultSink(
            es,
            settings,
            retry_max_s=min(SINK_RETRY_S, settings.store_retry_max_s),
            on_failed_attempt=metrics.store_errors.inc,  # a hung or failing store shows at once, per attempt
        ),
        metrics=metrics,
        on_tick=health.tick if health is not None else (lambda: None),
    )


def run_worker(settings: AnalyzerSettings, *, idle_exit_s: float | None = None) -> int:
    health = HealthState()
    server = None
    if settings.metrics_port:
        server = serve_health(health, settings.metrics_host, settings.metrics_port)
        log.info("health and metrics endpoint", url=server.url)
    worker = build_worker(settings, health=health)
    worker.install_signal_handlers()
    try:
        worker.run(idle_exit_s=idle_exit_s)
    finally:
        if server is not None:
            server.shutdown()
    return 0
