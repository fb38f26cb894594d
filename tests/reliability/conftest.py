"""Reliability and security tests: real tansu + noida-db, the real worker as a subprocess.

- `@pytest.mark.slow` tests are the long (soak) versions: skipped unless MOODWATCH_SOAK=1
  (`make soak` runs `MOODWATCH_SOAK=1 pytest -m slow tests/reliability`).
- Tests that start servers are marked `integration` (so `make test-fast` leaves them out).
- Every test records the figures it measured with the `figures` fixture; at the end of the session
  they are printed in pytest's terminal summary and merged into test-artifacts/reliability.json.
- MOODWATCH_CHAOS_SEED (default 20261101) seeds every random choice (kill points, delays, streams).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

# The session servers and helpers of the integration suite (not duplicated here).
from tests.integration.conftest import (
    fresh_topics,
    local_stack,
    noida,
    stack_dir,
    tansu,
    unique_group_id,
)
from workers.devstack.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
SOAK = os.environ.get("MOODWATCH_SOAK") == "1"
SEED = int(os.environ.get("MOODWATCH_CHAOS_SEED", "20261101"))
ARTIFACT = ROOT / "test-artifacts" / "reliability.json"
_SERVER_FIXTURES = {"tansu", "noida", "local_stack", "fresh_topics", "worker_env"}


def _figures_of(config) -> dict[str, dict[str, Any]]:
    """The session's figures live on the config object (test modules may import this conftest under a
    second module name, so a module-level dict would not be shared)."""
    if not hasattr(config, "_moodwatch_reliability_figures"):
        config._moodwatch_reliability_figures = {}
    return config._moodwatch_reliability_figures


def pytest_collection_modifyitems(config, items):
    skip_soak = pytest.mark.skip(reason="soak version: set MOODWATCH_SOAK=1 (make soak)")
    for item in items:
        if HERE not in Path(item.path).parents:
            continue
        if "slow" in item.keywords and not SOAK:
            item.add_marker(skip_soak)
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def figures(request):
    """A dict the test fills with what it measured; reported at the end of the session."""
    name = request.node.nodeid.split("::", 1)[-1]
    data: dict[str, Any] = {"seed": SEED, "soak": SOAK}
    started = time.monotonic()
    yield data
    data["seconds"] = round(time.monotonic() - started, 1)
    outcome = getattr(request.node, "_reliability_outcome", None)
    data["outcome"] = outcome
    _figures_of(request.config)[name] = data


@pytest.fixture(scope="session")
def record_figures(request):
    """record_figures(name, dict): figures that are not tied to one test (e.g. fuzz totals)."""

    def record(name: str, data: dict[str, Any]) -> None:
        _figures_of(request.config)[name] = {"seed": SEED, "soak": SOAK, **data}

    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        if hasattr(report, "wasxfail"):
            item._reliability_outcome = "xpassed" if report.passed else "xfailed"
        else:
            item._reliability_outcome = report.outcome


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    _FIGURES = _figures_of(config)
    if not _FIGURES:
        return
    terminalreporter.write_sep("=", "moodwatch reliability figures")
    for name, data in _FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(data, sort_keys=True, default=str)}")
    try:
        previous = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    except (OSError, json.JSONDecodeError):
        previous = {}
    previous.update(
        {name: {**data, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")} for name, data in _FIGURES.items()}
    )
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(previous, indent=2, sort_keys=True, default=str) + "\n")
    terminalreporter.write_line(f"(merged into {ARTIFACT.relative_to(ROOT)})")


# ---- worker wiring -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_db_dir(tmp_path_factory) -> Path:
    """The tiny sentence database, built once and saved, so each worker start just loads it."""
    from tests.support.tiny import tiny_database

    path = tmp_path_factory.mktemp("tiny-db")
    tiny_database(0).save(path)
    return path


@pytest.fixture
def make_settings(fresh_topics, unique_group_id):
    """make_settings(stack_like, **overrides) -> Settings with fresh topics (2 partitions), index, group.

    `stack_like` is anything with `settings(**kw)` (a LocalStack) pointed at the servers to use."""

    def make(stack, *, partitions: int = 2, create_with=None, **overrides):
        suffix = uuid.uuid4().hex[:8]
        if create_with is None:
            topics = fresh_topics("posts", "post-sentiment", "posts.dlq", partitions=partitions)
        else:  # a broker of the test's own
            topics = {n: f"{n}-{suffix}" for n in ("posts", "post-sentiment", "posts.dlq")}
            create_with.create_topics(topics.values(), partitions=partitions)
        values = dict(
            posts_topic=topics["posts"],
            results_topic=topics["post-sentiment"],
            dlq_topic=topics["posts.dlq"],
            consumer_group=unique_group_id,
            es_results_index=f"results-{suffix}",
            es_alerts_index=f"alerts-{suffix}",
            kafka_session_timeout_ms=6000,
            batch_max_posts=64,
            batch_max_wait_ms=200,
            metrics_port=free_port(),
            image_fetch_timeout_s=2.0,
            log_level="INFO",
        )
        values.update(overrides)
        return stack.settings(**values)

    return make


@pytest.fixture
def worker_env(tiny_db_dir, tmp_path):
    """worker_env(settings, name="worker", **extra_env) -> verify.WorkerProcess (killed at teardown)."""
    from tests.reliability.verify import WorkerProcess

    started: list[WorkerProcess] = []

    def make(settings, name: str = "worker", **extra_env: str) -> WorkerProcess:
        env = {"MOODWATCH_TEST_DB_DIR": str(tiny_db_dir), **extra_env}
        proc = WorkerProcess(settings, tmp_path / name, extra_env=env, name=name)
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.kill()
    from tests.reliability.verify import close_admins

    close_admins()  # their broker may be gone (a test's own); do not let them retry in the background
