"""The backbone through ONNX Runtime: an export of ``ImageBackbone.forward`` with a dynamic batch axis.

On this project's 2-core CPU, ONNX Runtime runs EfficientNet-Lite0 about 4-7x faster than eager torch
(README, "Backbone runtime"), so it is the CPU default of the local analyzer (``MOODWATCH_BACKBONE_RUNTIME``)
and the file the Triton onnxruntime / TensorRT backends serve (``moodwatch triton export``).

    path = ensure_backbone_onnx(backbone, cache_dir)   # exported once per backbone weights
    runner = OnnxBackbone(path, threads=2)
    feat_map, pooled = runner(backbone.preprocess(images))

The graph takes ``preprocess``'s pixels and returns ``(feature_map [B, C, h, w], pooled [B, C])``
exactly like ``ImageBackbone.forward``; ``check_parity`` compares both on random pixels.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog
import torch

from models.encoders import ImageBackbone

__all__ = [
    "ONNX_OPSET",
    "BackboneRuntimeError",
    "OnnxBackbone",
    "RawPixels",
    "backbone_digest",
    "backbone_onnx_path",
    "backbone_runner",
    "cached_checked",
    "check_parity",
    "checked_onnx_runner",
    "export_backbone_onnx",
    "ensure_backbone_onnx",
    "export_onnx",
    "onnx_session",
    "onnxruntime_available",
    "resolve_backbone_runtime",
]

ONNX_OPSET = 17
T = TypeVar("T")
log = structlog.get_logger("moodwatch.onnx")
INPUT_NAME = "PIXELS"
OUTPUT_NAMES = ("FEATURE_MAP", "POOLED")


class BackboneRuntimeError(RuntimeError):
    """The requested backbone runtime cannot be used (package missing, export failed, results differ)."""


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401  (probe only)
    except ImportError:
        return False
    return True


def resolve_backbone_runtime(requested: str, device: str | torch.device) -> str:
    """ "auto" -> "onnxruntime" on a CPU where the package is installed, else "torch"."""
    if requested == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return "onnxruntime" if on_cpu and onnxruntime_available() else "torch"
    if requested == "onnxruntime" and not onnxruntime_available():
        raise BackboneRuntimeError(
            "MOODWATCH_BACKBONE_RUNTIME=onnxruntime needs the onnxruntime package (pip install onnxruntime)"
        )
    return requested


def backbone_digest(backbone: ImageBackbone) -> str:
    """12 hex digits over the name, geometry and weights: the export's cache key."""
    h = hashlib.sha256(f"{backbone.name}|{backbone.input_size}|{ONNX_OPSET}|{torch.__version__}".encode())
    for name, tensor in sorted(backbone.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


class RawPixels(torch.nn.Module):
    """0..255 resized pixels (normalised here, as Triton's models take them) and any further inputs -> ``module``."""

    def __init__(self, module: torch.nn.Module, backbone: ImageBackbone) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("mean", backbone.pixel_mean.detach().cpu().clone())
        self.register_buffer("std", backbone.pixel_std.detach().cpu().clone())

    def forward(self, pixels: torch.Tensor, *rest: torch.Tensor):
        return self.module((pixels - self.mean) / self.std, *rest)


def export_backbone_onnx(backbone: ImageBackbone, path: Path, raw_pixels: bool = False) -> Path:
    """Write ``backbone`` (pixels -> feature map, pooled) as ONNX with a dynamic batch axis, atomically.

    ``raw_pixels``: the graph takes 0..255 pixels and normalises them itself (Triton's ``backbone`` contract);
    otherwise it takes ``preprocess``'s normalised pixels (the local analyzer).
    """
    module = (copy.deepcopy(backbone).cpu() if backbone.device.type != "cpu" else backbone).eval()
    if raw_pixels:
        module = RawPixels(module, backbone).eval()
    example = torch.zeros(2, 3, *backbone.input_size)
    return export_onnx(module, (example,), path, (INPUT_NAME,), OUTPUT_NAMES)


def export_onnx(
    module: torch.nn.Module, example: tuple, path: Path, input_names: tuple[str, ...], output_names: tuple[str, ...]
) -> Path:
    """``module`` as ONNX (TorchScript exporter, every input and output batched on axis 0), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    batch = {0: "batch"}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's constant-folding and shape notes
            torch.onnx.export(
                module,
                example,
                str(tmp),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes={name: batch for name in (*input_names, *output_names)},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def onnx_session(path: Path, threads: int | None = None, providers: list[str] | None = None):
    """An ONNX Runtime session on ``path`` with all graph optimisations, ``threads`` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackboneRuntimeError("the onnxruntime package is not installed") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def backbone_onnx_path(backbone: ImageBackbone, cache_dir: Path) -> Path:
    """Where the export of this backbone's weights is cached."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", backbone.name)
    return Path(cache_dir) / f"{safe}-{backbone_digest(backbone)}.onnx"


def ensure_backbone_onnx(backbone: ImageBackbone, cache_dir: Path) -> Path:
    """The cached export of this backbone's weights, made on first use (a few seconds)."""
    path = backbone_onnx_path(backbone, cache_dir)
    if not path.is_file():
        export_backbone_onnx(backbone, path)
    return path


class OnnxBackbone:
    """``pixels [B, 3, H, W]`` -> ``(feature_map, pooled)`` as torch tensors, through an ONNX Runtime session."""

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.path = Path(path)
        self.session = onnx_session(self.path, threads, providers)

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pixels.shape[0] == 0:
            raise ValueError("OnnxBackbone needs at least one image")
        array = np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)
        feat_map, pooled = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return torch.from_numpy(feat_map), torch.from_numpy(pooled)


def check_parity(
    backbone: ImageBackbone, runner: OnnxBackbone, batch: int = 2, atol: float = 1e-3, seed: int = 0
) -> float:
    """Max |torch - onnxruntime| over both outputs on random pixels; raises when above ``atol``."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, *backbone.input_size, generator=generator) * 255.0
    with torch.inference_mode():
        expected = backbone(pixels.to(backbone.device))
    got = runner(pixels)
    diff = max(float((e.float().cpu() - g).abs().max()) for e, g in zip(expected, got))
    if not diff <= atol:
        raise BackboneRuntimeError(f"ONNX Runtime backbone differs from torch by {diff:.2e} (> {atol:.0e})")
    return diff


def checked_onnx_runner(backbone: ImageBackbone, path: Path, threads: int | None = None) -> OnnxBackbone:
    """An ONNX Runtime session on ``path``, compared with ``backbone`` first, so a stale or wrong export fails
    the start instead of the results."""
    runner = OnnxBackbone(path, threads=threads)
    check_parity(backbone, runner)
    return runner


def cached_checked(path: Path, export: Callable[[Path], Any], open_checked: Callable[[Path], T]) -> T:
    """``open_checked(path)`` on the cached export, made by ``export(path)`` when missing. A cached file that
    cannot be opened or fails its check (truncated, or written by an older version of the graph code under the
    same weights) is exported again once; a fresh export that fails is an error."""
    if path.is_file():
        try:
            return open_checked(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable or stale cache entry is rebuilt below
            log.warning("cached ONNX export rejected, exporting again", path=str(path), error=str(exc)[:300])
            path.unlink(missing_ok=True)
    export(path)
    return open_checked(path)


def backbone_runner(backbone: ImageBackbone, runtime: str, cache_dir: Path):
    """(pixels -> (feature map, pooled), the runtime used) for a MOODWATCH_BACKBONE_RUNTIME value: the torch
    module itself, or its cached, checked ONNX export."""
    runtime = resolve_backbone_runtime(runtime, backbone.device)
    if runtime == "torch":
        return backbone, runtime
    runner = cached_checked(
        backbone_onnx_path(backbone, cache_dir),
        lambda path: export_backbone_onnx(backbone, path),
        lambda path: checked_onnx_runner(backbone, path),
    )
    return runner, runtime
