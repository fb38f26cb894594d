"""The learned analysis of a micro-batch as one ONNX graph, run by ONNX Runtime.

Backbone -> exact retrieval over the sentence database (a matmul + top-k on the stored embeddings) ->
heads -> learned proposals -> batched RoI-align -> region scores -> AR top-K: every tensor step of
``LocalAnalyzer``'s learned path, in one graph, so the runtime fuses across them and no Python runs
between the stages (about 1.5x the torch path's images/s after the preprocess on this CPU, README).

    program = LearnedProgram(backbone, heads, proposer, database, options)
    runner = learned_program_runner(program, cache_dir)        # exported once per weights, parity-checked
    outputs = runner(pixels, sizes, post_text, post_mask)      # dict of OUTPUT_NAMES -> tensors

Only an exact ("flat") sentence index is a plain matmul; with an approximate one (hnsw, ivf) the graph
would answer differently from the index, so ``unsupported_reason`` says so and the caller keeps torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.encoders import ImageBackbone
from models.moodnet import MoodHeads
from models.proposals import LearnedProposer
from pipelines.analyze import AnalyzerOptions
from pipelines.checkpoints import heads_version
from pipelines.onnx_backbone import (
    ONNX_OPSET,
    BackboneRuntimeError,
    RawPixels,
    backbone_digest,
    cached_checked,
    export_onnx,
    onnx_session,
)
from pipelines.regions import learned_top_regions, pad_top_regions, proposer_version
from pipelines.retrieval import SentenceDatabase

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "LearnedProgram",
    "OnnxLearnedProgram",
    "check_program_parity",
    "export_program_onnx",
    "learned_program_runner",
    "learned_runner_for",
    "unsupported_reason",
]

INPUT_NAMES = ("PIXELS", "IMAGE_SIZE", "POST_TEXT", "POST_TEXT_MASK")
OUTPUT_NAMES = (
    "POLARITY",
    "POLARITY_NO_TEXT",
    "EMOTIONS",
    "EMOTIONS6",
    "RETRIEVAL_SCORES",
    "RETRIEVAL_IDS",
    "REGION_BOXES",
    "REGION_OBJECTNESS",
    "REGION_DISTS",
    "REGION_MASK",
)
MAX_DATABASE_BYTES = 1 << 30  # the embeddings and features ride in the graph; protobuf stops at 2 GiB


def unsupported_reason(database: SentenceDatabase) -> str | None:
    """Why the database cannot be part of the graph, or None when it can."""
    if database.index_type != "flat":
        return f"the sentence index is {database.index_type} (approximate); the graph searches exactly"
    size = database.embeddings.nbytes + database.features.nbytes
    if size > MAX_DATABASE_BYTES:
        return f"the sentence database is {size / 2**20:.0f} MiB, over {MAX_DATABASE_BYTES >> 20} MiB for one graph"
    return None


class LearnedProgram(nn.Module):
    """(normalised pixels [B, 3, H, W], image sizes [B, 2] width/height, post text [B, D], post-text mask [B, 1])
    -> the OUTPUT_NAMES tensors, as LocalAnalyzer's learned path computes them with a flat index."""

    def __init__(
        self,
        backbone: ImageBackbone,
        heads: MoodHeads,
        proposer: LearnedProposer,
        database: SentenceDatabase,
        candidates: int,
        retrieval_k: int,
        top_k: int,
        alpha: float,
    ) -> None:
        super().__init__()
        reason = unsupported_reason(database)
        if reason:
            raise ValueError(reason)
        self.backbone, self.heads, self.proposer = backbone.eval(), heads.eval(), proposer.eval()
        self.register_buffer("embeddings", torch.as_tensor(np.asarray(database.embeddings, np.float32)))
        self.register_buffer("features", torch.as_tensor(np.asarray(database.features, np.float32)))
        self.candidates = max(1, min(candidates, len(database)))
        self.retrieval_k, self.top_k, self.alpha = retrieval_k, top_k, alpha
        self.database_version = database.version

    def cache_key(self) -> str:
        """What the export depends on (hashing the weights takes a moment: only the cache asks for it)."""
        return "|".join(
            [
                backbone_digest(self.backbone),
                heads_version(self.heads),
                proposer_version(self.proposer),
                self.database_version,
                f"{self.candidates},{self.retrieval_k},{self.top_k},{self.alpha}",
            ]
        )

    def forward(self, pixels, image_size, post_text, post_text_mask):
        image_size = image_size.long()  # int32 from Triton's clients
        feat_map, pooled = self.backbone(pixels)
        query = self.heads.embed(pooled)
        query = query / query.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores, ids = (query @ self.embeddings.T).topk(self.candidates, dim=1)
        text_feats = self.features[ids[:, : self.retrieval_k]].to(feat_map.dtype)
        mask = post_text_mask.reshape(-1)
        polarity, _ = self.heads.polarity(text_feats, feat_map, post_text, mask)
        polarity_no_text, _ = self.heads.polarity(text_feats, feat_map, post_text, torch.zeros_like(mask))
        boxes, objectness, box_mask = self.proposer(feat_map, image_size)
        top = learned_top_regions(self.heads, feat_map, boxes, objectness, box_mask, self.top_k, self.alpha)
        top = pad_top_regions(top, self.top_k)
        emotions, emotions6 = self.heads.emotions(pooled), self.heads.emotions6(pooled)
        return (
            polarity,
            polarity_no_text,
            emotions,
            emotions6,
            scores,
            ids,
            top.boxes,
            top.objectness,
            top.dists,
            top.mask,
        )

    def example_inputs(self, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """Random 0..1 pixels of two image shapes, with post text on the second image."""
        generator = torch.Generator().manual_seed(seed)
        pixels = torch.rand(batch, 3, *self.backbone.input_size, generator=generator)
        sizes = torch.tensor([(640, 480), (300, 900)] * batch, dtype=torch.int64)[:batch]
        text = torch.randn(batch, self.heads.config.text_dim, generator=generator)
        mask = (torch.arange(batch) % 2 == 1).reshape(batch, 1)
        return pixels, sizes, text, mask


def export_program_onnx(program: LearnedProgram, path: Path, triton_inputs: bool = False) -> Path:
    """Write the program as ONNX with a dynamic batch axis, atomically; ``triton_inputs``: the graph takes
    0..255 pixels and int32 sizes (the onnxruntime-backend ``learned_program``), else the local analyzer's."""
    module, example = program.eval(), program.example_inputs()
    if triton_inputs:
        module = RawPixels(program, program.backbone).eval()
        example = (example[0] * 255.0, example[1].int(), *example[2:])
    return export_onnx(module, example, path, INPUT_NAMES, OUTPUT_NAMES)


class OnnxLearnedProgram:
    """The exported program through an ONNX Runtime session: the same call and outputs as ``LearnedProgram``."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads, providers)

    def __call__(self, pixels, image_size, post_text, post_text_mask) -> dict[str, torch.Tensor]:
        if pixels.shape[0] == 0:
            raise ValueError("the learned program needs at least one image")
        feeds = {
            "PIXELS": np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32),
            "IMAGE_SIZE": np.ascontiguousarray(image_size.detach().cpu().numpy(), dtype=np.int64),
            "POST_TEXT": np.ascontiguousarray(post_text.detach().cpu().numpy(), dtype=np.float32),
            "POST_TEXT_MASK": np.ascontiguousarray(post_text_mask.detach().cpu().numpy().reshape(-1, 1), dtype=bool),
        }
        return {name: torch.from_numpy(a) for name, a in zip(OUTPUT_NAMES, self.session.run(list(OUTPUT_NAMES), feeds))}


def check_program_parity(program: LearnedProgram, runner: OnnxLearnedProgram, atol: float = 1e-3) -> float:
    """Max |torch - onnxruntime| over the float outputs on random inputs (masks must be equal); raises above atol."""
    inputs = program.example_inputs()
    with torch.inference_mode():
        expected = dict(zip(OUTPUT_NAMES, program(*inputs)))
    got = runner(*inputs)
    if not torch.equal(expected["REGION_MASK"].cpu(), got["REGION_MASK"]):
        raise BackboneRuntimeError("the ONNX Runtime learned program keeps other regions than torch")
    floats = [n for n in OUTPUT_NAMES if n not in ("RETRIEVAL_IDS", "REGION_MASK")]
    diff = max(float((expected[n].float().cpu() - got[n].float()).abs().max()) for n in floats)
    if not diff <= atol:
        raise BackboneRuntimeError(f"the ONNX Runtime learned program differs from torch by {diff:.2e} (> {atol:.0e})")
    return diff


def learned_program_runner(program: LearnedProgram, cache_dir: Path, threads: int | None = None) -> OnnxLearnedProgram:
    """The cached export of this program (made on first use, about a second), checked against torch."""
    if any(t.device.type != "cpu" for t in program.buffers()):
        raise BackboneRuntimeError("the learned program runs through ONNX Runtime on a CPU; on a GPU use torch")
    digest = hashlib.sha256(f"{program.cache_key()}|{ONNX_OPSET}|{torch.__version__}".encode()).hexdigest()[:12]

    def open_checked(path: Path) -> OnnxLearnedProgram:
        runner = OnnxLearnedProgram(path, threads=threads)
        check_program_parity(program, runner)
        return runner

    path = Path(cache_dir) / f"learned-program-{digest}.onnx"
    return cached_checked(path, lambda target: export_program_onnx(program, target), open_checked)


def learned_runner_for(
    backbone: ImageBackbone,
    heads: MoodHeads,
    proposer: LearnedProposer,
    database: SentenceDatabase,
    options: AnalyzerOptions,
    cache_dir: Path,
) -> tuple[OnnxLearnedProgram | None, str]:
    """(the checked runner, "onnxruntime") for a LocalAnalyzer with these parts, or (None, why not)."""
    reason = unsupported_reason(database)
    if reason:
        return None, reason
    program = LearnedProgram(
        backbone,
        heads,
        proposer,
        database,
        options.candidates,
        options.retrieval_k,
        options.regions_top_k,
        options.region_alpha,
    )
    return learned_program_runner(program, cache_dir), "onnxruntime"
