"""The one Analyzer interface that both backends (in-process torch, Triton gRPC) implement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from pipelines.errors import PermanentError, TransientError
from pipelines.text import PostText
from schemas.results import ImageAnalysis, ModelVersions


class BackendUnavailable(TransientError):
    """The model backend cannot be reached right now (transient: retry, never dead-letter)."""


class AnalysisFailed(PermanentError):
    """This input cannot be analysed (permanent for this input: dead-letter it)."""


@runtime_checkable
class Analyzer(Protocol):
    """A batch of posts -> one ImageAnalysis per post, in order.

    ``images``: decoded RGB images (H x W x 3 uint8); ``texts``: per post its text and language
    (pipelines.text.PostText) or None, None for the whole batch = every post image only. Which texts
    the model reads is decided by pipelines.text (language policy) and reported in the analysis."""

    versions: ModelVersions

    def analyze(
        self, images: Sequence[np.ndarray], texts: Sequence[PostText | None] | None = None
    ) -> list[ImageAnalysis]: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
