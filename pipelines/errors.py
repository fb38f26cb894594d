"""The two kinds of failure every adapter reports, so the worker decides by kind and never by adapter.

Lives in pipelines/ so both the model backends (pipelines.analyzer_api) and workers/adapters can derive from it.
"""

from __future__ import annotations


class TransientError(RuntimeError):
    """An outage of something outside the process: retry the same work later, never dead-letter it,
    never commit past it."""


class PermanentError(RuntimeError):
    """The item itself cannot be handled (its content is at fault): dead-letter it and commit past it;
    retrying would fail the same way."""


class ItemsRejected(PermanentError):
    """Some items of a batch were refused for their own content; every other item of the batch went
    through. `reasons` maps each refused item's id to why, `ids` lists them."""

    def __init__(self, reasons: dict[str, str], message: str) -> None:
        super().__init__(message)
        self.reasons = dict(reasons)
        self.ids = list(self.reasons)

    def only(self, item_id: str) -> ItemsRejected:
        """The same refusal, of the same type, narrowed to one item (dead-lettered with that item)."""
        raise NotImplementedError(f"{type(self).__name__} must say how it narrows to one item")
