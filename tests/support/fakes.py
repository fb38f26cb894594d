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


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error

    def get(self, timeout=None):
        raise self.error


class FakeProducer:
    """ack_failures: exceptions raised, in order, by the acknowledgements of the next messages sent."""

    def __init__(self, ack_failures: list[BaseException] | None = None):
        self.sent: list[tuple[str, bytes, bytes, list]] = []
        self.ack_failures = list(ack_failures or [])

    def send(self, topic, key=None, value=None, headers=None):
        self.sent.append((topic, key, value, headers or []))
        return _Failed(self.ack_failures.pop(0)) if self.ack_failures else _Done()

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
    """failures: exceptions raised by the next write calls, in order, before writes succeed."""

    def __init__(self, failures: list[BaseException] | None = None):
        self.docs: list = []
        self.failures = list(failures or [])
        self.write_attempts = 0

    def write(self, results):
        self.write_attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        self.docs.extend(results)
