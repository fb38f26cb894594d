"""Tiny randomly initialised models with the real architectures, built in the test (no weights)."""

from __future__ import annotations

import functools

import torch

from models.encoders import tiny_image_backbone, tiny_text_encoder
from models.moodnet import HeadsConfig, MoodHeads
from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.retrieval import SentenceDatabase, load_seed_sentences

TINY_HEADS = HeadsConfig(image_dim=64, text_dim=32, hidden_dim=16, emotion6_members=2, emotion6_hidden=16)


@functools.cache
def tiny_database(seed: int = 0) -> SentenceDatabase:
    return SentenceDatabase.from_sentences(load_seed_sentences(), tiny_text_encoder(seed))


def tiny_heads(seed: int = 0) -> MoodHeads:
    torch.manual_seed(seed)
    return MoodHeads(TINY_HEADS).eval()


def tiny_analyzer(seed: int = 0, *, regions: bool = True) -> LocalAnalyzer:
    return LocalAnalyzer(
        tiny_image_backbone(seed, feature_dim=64),
        tiny_heads(seed),
        tiny_database(seed),
        AnalyzerOptions(regions_enabled=regions, proposal_threads=1),
        text_encoder=tiny_text_encoder(seed),
    )
