"""Small helpers shared by the head trainers (pipelines.train, pipelines.polarity)."""

from __future__ import annotations

import numpy as np
import torch

from models.moodnet import MoodHeads
from pipelines.retrieval import Retrieval, SentenceDatabase


def _tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


def _batches(n: int, size: int, rng: np.random.Generator):
    order = rng.permutation(n)
    for start in range(0, n, size):
        yield order[start : start + size]


def _flip_mask(rng: np.random.Generator, n: int, *shape: int) -> torch.Tensor:
    return torch.as_tensor(rng.random(n) < 0.5).view(n, *shape)


def retrieve(heads: MoodHeads, db: SentenceDatabase, pooled: np.ndarray, k: int) -> Retrieval:
    with torch.inference_mode():
        query = heads.embed(_tensor(pooled)).numpy()
    return db.retrieve(query, k=min(k, len(db)))
