"""Suite-wide settings: one torch thread (tiny tensors run slower with more on a busy 2-core box)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    # The first backward() of a process lazily imports torch.nested (~1-2 s); pay it here, not inside
    # whichever test happens to run first.
    torch.ones(1, requires_grad=True).sum().backward()
    yield
    torch.set_num_threads(previous)
