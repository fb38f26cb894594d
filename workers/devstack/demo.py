"""`moodwatch demo`: the whole job on embedded defaults, start to finish, on one machine."""

from __future__ import annotations

import time
from pathlib import Path

from kafka import KafkaConsumer
from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from workers.analyzer.settings import AnalyzerSettings
from workers.analyzer.wiring import build_worker
from workers.common.logs import get_logger
from workers.devstack.sample_posts import poison_posts, sample_posts
from workers.devstack.servers import LocalStack

log = get_logger("moodwatch.demo")
console = Console()


def produce_demo_posts(settings: AnalyzerSettings, count: int) -> tuple[int, int]:
    from workers.adapters.kafka_io import make_producer

    producer = make_producer(settings)
    valid = 0
    for post_id, value in sample_posts(count, image_dir=settings.image_local_root):
        producer.send(settings.posts_topic, key=post_id.encode(), value=value)
        valid += 1
    poison = poison_posts()
    for _label, key, value in poison:
        producer.send(settings.posts_topic, key=key.encode(), value=value)
    producer.flush()
    producer.close()
    return valid, len(poison)


def read_dlq(settings: AnalyzerSettings, expected: int, timeout_s: float = 20.0) -> list[dict[str, str]]:
    consumer = KafkaConsumer(
        settings.dlq_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    rows = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(rows) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    rows.append(
                        {k: v.decode("utf-8", "replace") for k, v in (r.headers or [])}
                        | {"key": (r.key or b"").decode("utf-8", "replace")}
                    )
    finally:
        consumer.close()
    return rows


def summary_table(es, settings: AnalyzerSettings) -> Table:
    es.indices.refresh(index=settings.es_results_index)
    hits = es.search(index=settings.es_results_index, size=200, sort=[{"post_id": "asc"}])["hits"]["hits"]
    table = Table(title=f"analysed posts ({len(hits)} in Elasticsearch index {settings.es_results_index})")
    for col in ("post", "channel", "polarity", "p(neg)", "dominant emotion", "regions", "top evidence sentence"):
        table.add_column(col, overflow="fold")
    for hit in hits:
        doc = hit["_source"]
        evidence = doc["evidence"][0]["text"] if doc["evidence"] else ""
        table.add_row(
            doc["post_id"],
            doc["channel"],
            doc["polarity"],
            f"{doc['negative_score']:.2f}",
            doc["dominant_emotion"],
            str(len(doc["regions"])),
            evidence,
        )
    return table


def run_demo(
    settings: AnalyzerSettings, *, workdir: Path, serve: bool = False, triton: bool = False, posts: int = 24
) -> int:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]moodwatch demo[/bold]: local broker + store under {workdir}")
    stack = LocalStack.from_dir(workdir)
    stack.start()
    try:
        settings = stack.settings(
            **{
                k: v
                for k, v in settings.model_dump().items()
                if k not in ("kafka_bootstrap", "es_url") and v is not None
            }
            | {
                "metrics_port": 0,
                "consumer_group": f"moodwatch-demo-{int(time.time())}",
                "image_local_root": workdir / "images",
            }
        )
        if triton:
            from workers.devstack.triton_server import start_local_triton

            settings = start_local_triton(stack, settings)
        stack.tansu.create_topics(
            [settings.posts_topic, settings.results_topic, settings.dlq_topic, settings.alerts_topic], partitions=2
        )
        console.print(f"broker {settings.kafka_bootstrap}, store {settings.es_url}; loading models ...")
        worker = build_worker(settings, create_topics=False)
        valid, poison = produce_demo_posts(settings, posts)
        console.print(
            f"produced {valid} sample posts and {poison} deliberately broken ones to '{settings.posts_topic}'"
        )
        started = time.monotonic()
        processed = dead = 0
        worker.subscribe()
        deadline = time.monotonic() + 600
        while processed + dead < valid + poison and time.monotonic() < deadline:
            records = worker.poll_batch()
            if records:
                report = worker.process(records)
                processed += report.processed
                dead += report.dead_lettered
                console.print(
                    f"  batch: {report.processed} analysed, {report.dead_lettered} dead-lettered "
                    f"({processed + dead}/{valid + poison})"
                )
        elapsed = time.monotonic() - started
        worker.close()
        from workers.adapters.elastic import make_es_client

        es = make_es_client(settings)
        console.print(summary_table(es, settings))
        dlq = read_dlq(settings, dead)
        dlq_table = Table(title=f"dead-lettered posts ({len(dlq)} on '{settings.dlq_topic}')")
        for col in ("key", "stage", "error", "reason"):
            dlq_table.add_column(col, overflow="fold")
        for row in dlq:
            dlq_table.add_row(
                row["key"], row.get("stage", ""), row.get("error.class", ""), row.get("error.message", "")[:160]
            )
        console.print(dlq_table)
        console.print(
            f"[bold]{processed}[/bold] posts analysed and stored, [bold]{dead}[/bold] dead-lettered, "
            f"in {elapsed:.1f}s. Results: {settings.es_url}/{settings.es_results_index}/_search ; "
            f"Kafka topic '{settings.results_topic}' on {settings.kafka_bootstrap}; logs in {workdir / 'logs'}"
        )
        ok = processed == valid and dead == poison
        if serve:
            from workers.dashboard.server import serve_dashboard
            from workers.dashboard.settings import DashboardSettings

            dashboard_settings = DashboardSettings(
                **settings.model_dump(exclude_none=True)
                | {"dashboard_image_root": settings.image_local_root, "dashboard_default_range": "all"}
            )
            if dashboard_settings.dashboard_users is None:  # demo logins, printed once (plain HTTP on loopback)
                logins = demo_logins()
                dashboard_settings = dashboard_settings.model_copy(
                    update={"dashboard_users": SecretStr(logins.pop("entries")), "dashboard_cookie_secure": False}
                )
                console.print("dashboard logins: " + ", ".join(f"{n} / {p}" for n, p in logins.items()))
            console.print(
                f"serving the dashboard on http://{dashboard_settings.dashboard_host}:"
                f"{dashboard_settings.dashboard_port}/ ; Ctrl-C to stop"
            )
            serve_dashboard(dashboard_settings)
        return 0 if ok else 1
    finally:
        stack.stop()


def demo_logins() -> dict[str, str]:
    """A viewer, a reviewer and an admin with fresh random passwords; "entries" is the users setting."""
    import secrets

    from workers.dashboard.auth import hash_password

    logins = {role: secrets.token_urlsafe(9) for role in ("viewer", "reviewer", "admin")}
    entries = "\n".join(f"{role}:{role}:{hash_password(password)}" for role, password in logins.items())
    return {**logins, "entries": entries}
