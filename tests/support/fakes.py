"""In-memory stand-ins for the worker's Kafka consumer/producer and result store (faststream-style
in-memory tests): they record what the worker did, and can be told to fail."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list = field(default_factory=list)


class _Done:
    def get(self, timeout=None):
        return None


class FakeProducer:
    def __init__(self):
        self.sent: list[tuple[str, bytes, bytes, list]] = []

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers or []))
        return _Done()

    def flush(self, timeout=None):
        pass

    def close(self, timeout=None):
        pass


class FakeConsumer:
    """commit_failures: exceptions raised by the next commit calls, in order, before commits succeed."""

    def __init__(self, assignment: set | None = None, commit_failures: list[BaseException] | None = None):
        self.commits: list[dict] = []
        self.commit_attempts = 0
        self.commit_failures = list(commit_failures or [])
        self._assignment = set(assignment or ())
        self.paused: set = set()
        self.pause_calls = 0

    def commit(self, offsets=None, **kw: Any):
        self.commit_attempts += 1
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.commits.append(offsets)

    def assignment(self):
        return set(self._assignment)

    def pause(self, *p):
        self.pause_calls += 1
        self.paused.update(p)

    def resume(self, *p):
        self.paused.difference_update(p)

    def poll(self, timeout_ms=0, max_records=None):
        return {}

    def end_offsets(self, partitions):
        return {tp: 0 for tp in partitions}

    def position(self, tp):
        return 0

    def close(self, autocommit=False):
        pass


class FakeStore:
    def __init__(self):
        self.docs: list = []

    def write(self, results):
        self.docs.extend(results)
