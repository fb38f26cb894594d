"""The one Analyzer interface that both backends (in-process torch, Triton gRPC) implement."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from schemas.results import ImageAnalysis, ModelVersions


class BackendUnavailable(RuntimeError):
    """The model backend cannot be reached right now (transient: retry, never dead-letter)."""


class AnalysisFailed(RuntimeError):
    """This input cannot be analysed (permanent for this input: dead-letter it)."""


@runtime_checkable
class Analyzer(Protocol):
    """A batch of decoded RGB images (H x W x 3 uint8) -> one ImageAnalysis per image, in order."""

    versions: ModelVersions

    def analyze(self, images: Sequence[np.ndarray]) -> list[ImageAnalysis]: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
