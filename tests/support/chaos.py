"""The real analyzer worker with tiny models plus chaos switches: `python -m tests.support.chaos`.

Like tests/support/tiny_worker.py (which it does not change), but built for the reliability tests:
the health + /metrics endpoint is served (MOODWATCH_METRICS_PORT) exactly as `run_worker` does, and
the dependencies of the real `AnalyzerWorker` (from `workers.analyzer.wiring.build_worker`) are wrapped so a
test can break them from outside or have the process die at a chosen moment.

Environment (besides the MOODWATCH_* settings):
- MOODWATCH_TEST_DB_DIR: load the tiny sentence database saved there (`SentenceDatabase.save`)
  instead of re-encoding the seed sentences (~10 s per start on the shared 2-core box).
- MOODWATCH_TEST_INPUT_SIZE: input size of the tiny backbone (default 64; the model is not what is
  under test, the delivery guarantees are).
- MOODWATCH_TEST_REGIONS=1: run the affective-region stage too (off by default: slow on this box).
- MOODWATCH_TEST_IDLE_EXIT_S: exit cleanly after this long without records (default: run until
  SIGTERM).
- MOODWATCH_CHAOS_BACKEND_DOWN_FILE: while this file exists, every analyzer call raises
  `pipelines.analyzer_api.BackendUnavailable` (a model backend outage).
- MOODWATCH_CHAOS_KILL_AFTER_STORES=N: SIGKILL right after the N-th acknowledged store write
  (documents in Elasticsearch; nothing produced or committed).
- MOODWATCH_CHAOS_KILL_BEFORE_COMMIT=N: SIGKILL right before the N-th offset commit (documents stored
  and results / dead letters produced; offsets not committed: the re-read re-produces them).
- MOODWATCH_CHAOS_KAFKA_LOG=INFO: kafka-python's own log level (assignments, rebalances).
- SIGUSR1 dumps every thread's stack into the worker's log (to diagnose a hang).
- MOODWATCH_CHAOS_EVENTS: append one JSON line per event to this file ("start", "commit" with the
  committed offsets, "store", "backend_refused", "exit"), flushed at once so a SIGKILL loses none.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from pipelines.analyzer_api import BackendUnavailable

EVENTS_ENV = "MOODWATCH_CHAOS_EVENTS"


class EventLog:
    """Append-only JSON lines, one write(2) per event (O_APPEND), so nothing is lost to a SIGKILL."""

    def __init__(self, path: str | None) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None
        self._lock = threading.Lock()

    def emit(self, kind: str, **data: Any) -> None:
        if self._fd is None:
            return
        line = json.dumps({"event": kind, "t": time.time(), "pid": os.getpid(), **data}) + "\n"
        with self._lock:
            os.write(self._fd, line.encode())


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL mid-write (not expected with O_APPEND)
            continue
    return out


class ChaosAnalyzer:
    """Delegates to the real analyzer unless the outage flag file exists; `delay_s` per batch slows
    the worker down so an outage is sure to land mid-stream."""

    def __init__(self, inner: Any, flag: str | None, events: EventLog, delay_s: float = 0.0) -> None:
        self.inner, self.flag, self.events = inner, Path(flag) if flag else None, events
        self.delay_s = delay_s
        self.versions = inner.versions
        self.refused = 0

    def _check(self) -> None:
        if self.flag is not None and self.flag.exists():
            self.refused += 1
            self.events.emit("backend_refused", n=self.refused)
            raise BackendUnavailable("chaos: model backend outage (flag file present)")

    def analyze(self, images, texts=None):
        self._check()
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.analyze(images, texts)

    def ready(self) -> bool:
        return not (self.flag is not None and self.flag.exists()) and self.inner.ready()

    def close(self) -> None:
        self.inner.close()


class ChaosStore:
    def __init__(self, inner: Any, kill_after: int, events: EventLog) -> None:
        self.inner, self.kill_after, self.events, self.writes = inner, kill_after, events, 0

    def write(self, results) -> None:
        self.inner.write(results)
        self.writes += 1
        self.events.emit("store", n=self.writes, docs=len(results))
        if self.kill_after and self.writes >= self.kill_after:
            self.events.emit("suicide", where="after_store", n=self.writes)
            os.kill(os.getpid(), signal.SIGKILL)


class ChaosConsumer:
    """Wraps the KafkaConsumer: logs commits, pause/resume and non-empty polls (with the assignment and
    the paused partitions at that moment); optionally dies right before the N-th commit."""

    def __init__(self, inner: Any, kill_before: int, events: EventLog) -> None:
        self._inner, self._kill_before, self._events, self.commits = inner, kill_before, events, 0

    def commit(self, offsets=None, **kw):
        self.commits += 1
        if self._kill_before and self.commits >= self._kill_before:
            self._events.emit("suicide", where="before_commit", n=self.commits)
            os.kill(os.getpid(), signal.SIGKILL)
        result = self._inner.commit(offsets=offsets, **kw)
        if offsets:
            self._events.emit(
                "commit",
                n=self.commits,
                offsets={f"{tp.topic}:{tp.partition}": om.offset for tp, om in offsets.items()},
            )
        return result

    def pause(self, *partitions):
        self._events.emit("pause", partitions=sorted(tp.partition for tp in partitions))
        return self._inner.pause(*partitions)

    def resume(self, *partitions):
        self._events.emit("resume", partitions=sorted(tp.partition for tp in partitions))
        return self._inner.resume(*partitions)

    def poll(self, *args, **kw):
        got = self._inner.poll(*args, **kw)
        if got:
            self._events.emit(
                "polled",
                records={tp.partition: [r[0].offset, r[-1].offset] for tp, r in got.items() if r},
                assignment=sorted(tp.partition for tp in self._inner.assignment()),
                paused=sorted(tp.partition for tp in self._inner.paused()),
            )
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def build_tiny_analyzer() -> Any:
    import torch

    from models.encoders import tiny_image_backbone
    from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
    from tests.support.tiny import tiny_database, tiny_heads

    torch.set_num_threads(1)
    db_dir = os.environ.get("MOODWATCH_TEST_DB_DIR")
    if db_dir and (Path(db_dir) / "manifest.json").exists():
        from pipelines.retrieval import SentenceDatabase

        database = SentenceDatabase.load(db_dir)
    else:
        database = tiny_database(0)
    size = int(os.environ.get("MOODWATCH_TEST_INPUT_SIZE", "64"))
    return LocalAnalyzer(
        tiny_image_backbone(0, feature_dim=64, input_size=size),
        tiny_heads(0),
        database,
        AnalyzerOptions(regions_enabled=os.environ.get("MOODWATCH_TEST_REGIONS") == "1", proposal_threads=1),
    )


def main() -> None:
    import faulthandler

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: stacks into the log (hangs)
    from workers.analyzer.settings import AnalyzerSettings as Settings
    from workers.analyzer.wiring import build_worker
    from workers.common.health import HealthState, serve_health
    from workers.common.logs import configure_logging, get_logger

    events = EventLog(os.environ.get(EVENTS_ENV))
    settings = Settings()
    configure_logging(settings.log_level, True)
    log = get_logger("moodwatch.chaos")
    health = HealthState()
    server = serve_health(health, settings.metrics_host, settings.metrics_port) if settings.metrics_port else None
    analyzer = ChaosAnalyzer(
        build_tiny_analyzer(),
        os.environ.get("MOODWATCH_CHAOS_BACKEND_DOWN_FILE"),
        events,
        delay_s=float(os.environ.get("MOODWATCH_CHAOS_ANALYZE_DELAY_S", "0")),
    )
    worker = build_worker(settings, analyzer=analyzer, health=health, create_topics=False)
    worker.store = ChaosStore(worker.store, int(os.environ.get("MOODWATCH_CHAOS_KILL_AFTER_STORES", "0")), events)
    worker.consumer = ChaosConsumer(
        worker.consumer, int(os.environ.get("MOODWATCH_CHAOS_KILL_BEFORE_COMMIT", "0")), events
    )
    kafka_level = os.environ.get("MOODWATCH_CHAOS_KAFKA_LOG")
    if kafka_level:  # configure_logging quiets kafka-python to WARNING; rebalances are logged at INFO
        import logging

        logging.getLogger("kafka").setLevel(kafka_level.upper())
    worker.install_signal_handlers()
    idle = os.environ.get("MOODWATCH_TEST_IDLE_EXIT_S")
    events.emit("start", metrics=server.url if server is not None else None)
    log.info("chaos worker ready", metrics=server.url if server is not None else None)
    try:
        worker.run(idle_exit_s=float(idle) if idle else None)
    finally:
        events.emit("exit", refused=analyzer.refused)
        if server is not None:
            server.shutdown()


if __name__ == "__main__":
    main()
