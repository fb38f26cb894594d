"""What the analyzer worker needs from its adapters, and the errors it expects them to raise.

The worker imports this module, never a concrete adapter; workers/analyzer/wiring.py plugs the adapters in.
Every adapter reports an outage as a `TransientError` (the worker waits it out without committing) and
documents refused for their own content as `ItemsRejected` (the worker dead-letters exactly those).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pipelines.errors import ItemsRejected, PermanentError, TransientError
from schemas.results import AnalysisResultV2

__all__ = [
    "GroupConsumer",
    "ImageSource",
    "ItemsRejected",
    "PermanentError",
    "Producer",
    "ResultStore",
    "TransientError",
]


class ImageSource(Protocol):
    def load_many(self, refs: Sequence[Any]) -> list[Any]:
        """One decoded image per ref, in order, or the exception (with a `stage`) that rejects that post."""
        ...


class ResultStore(Protocol):
    def write(self, results: list[AnalysisResultV2]) -> None:
        """Returns once every result is stored (re-writing a post_id overwrites it). Raises TransientError
        when the store is unavailable, ItemsRejected (keyed by post_id) when only those were refused."""
        ...


class GroupConsumer(Protocol):
    """A consumer-group member (kafka-python's KafkaConsumer surface). `commit` raises TransientError for a
    broker outage; a commit refused because the group rebalanced raises the client's own error."""

    def subscribe(self, topics: list[str], listener: Any = None) -> None: ...

    def poll(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, list[Any]]: ...

    def commit(self, offsets: dict[Any, Any] | None = None, **kwargs: Any) -> None: ...

    def assignment(self) -> set[Any]: ...

    def pause(self, *partitions: Any) -> None: ...

    def resume(self, *partitions: Any) -> None: ...

    def seek(self, partition: Any, offset: int) -> None: ...

    def position(self, partition: Any) -> int: ...

    def end_offsets(self, partitions: list[Any]) -> dict[Any, int]: ...

    def close(self, autocommit: bool = True) -> None: ...


class Acknowledgement(Protocol):
    def get(self, timeout: float | None = None) -> Any: ...


class Producer(Protocol):
    """Results and dead letters go out through this; a message not acknowledged raises TransientError."""

    def send(
        self,
        topic: str,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Acknowledgement: ...

    def flush(self, timeout: float | None = None) -> None: ...

    def close(self, timeout: float | None = None) -> None: ...
