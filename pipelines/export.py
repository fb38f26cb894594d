"""Export a servable Triton model repository from the trained heads, the retrieval index and the backbone.

    export_repository("models/weights/heads.pt", "artifacts/index/seed", "artifacts/triton_repo", kind="cpu")
    moodwatch triton export --repo artifacts/triton_repo [--kind gpu]

``triton_repo/`` in the project holds the *templates*: one folder per model with a config.pbtxt
whose ``${...}`` fields depend on the backbone, the index and the deployment kind, and 1/model.py.
The export renders them for ``kind`` "cpu" or "gpu" (``PROFILES``: instance kind and counts,
batch sizes, queue delays, threads, warmup batch; the GPU variant is generated from the same
templates, never hand-copied) and writes into every model's version folder what that model needs:

=================  =============================================================================
model              files in <repo>/<model>/1/
=================  =============================================================================
backbone           backbone.json (spec, name, geometry), backbone.pt (state dict, fp32)
retrieval          heads.pt (the aligner), index/ (the retrieval index folder as saved)
heads              heads.pt
regions            heads.pt (the region scorer), backbone.json (geometry); warmup/ sample boxes
moodwatch          (ensemble; empty version folder; contract + versions as config parameters)
moodwatch_fused    backbone.json, backbone.pt, heads.pt, index/ (only when asked for: ``models=``)
moodwatch_learned  as moodwatch_fused plus proposals.pt (the learned proposer); warmup/ an image size
                   (only when asked for)
=================  =============================================================================

plus ``moodwatch_serving.py`` (request handling) next to each model.py, and ``export.json`` at
the repository root (what was exported from where; Triton ignores files there). Identical files
are hard-linked where the filesystem allows. The repository is written to a temporary folder
beside ``out_repo`` and swapped in at the end, so a failed export never leaves half a repository.

Production note: the wheel on this machine has only the python backend, so every model is a
python-backend model (torch inside). On GPU nodes the backbone is the one worth moving to the
TensorRT / ONNX Runtime / libtorch backends (a traced backbone with the normalisation folded in);
the ensemble and the client contract do not change when that happens.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.encoders import ImageBackbone, load_image_backbone
from models.moodnet import MoodHeads
from models.proposals import LearnedProposer
from pipelines.analyze import ANALYZER_VERSION, AnalyzerOptions, analyzer_versions
from pipelines.checkpoints import load_heads
from pipelines.evidence import EvidenceRanking
from pipelines.onnx_backbone import export_backbone_onnx, onnxruntime_available
from pipelines.onnx_learned import LearnedProgram, export_program_onnx, unsupported_reason
from pipelines.regions import DEFAULT_PROPOSER, RegionSettings, load_proposer, proposer_mismatch, proposer_version
from pipelines.retrieval import IndexMismatchError, SentenceDatabase

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The templates ship with the source tree (not inside a Python package): run the export from a
# checkout / editable install, or point MOODWATCH_TRITON_TEMPLATES at a copy of triton_repo/.
TEMPLATES_DIR = Path(os.environ.get("MOODWATCH_TRITON_TEMPLATES") or PROJECT_ROOT / "triton_repo")
SHARED_FILE = "moodwatch_serving.py"
ENSEMBLE = "moodwatch"
FUSED = "moodwatch_fused"
LEARNED = "moodwatch_learned"
STAGE_MODELS = ("backbone", "retrieval", "heads", "regions")
# moodwatch_learned on the onnxruntime backend: an ensemble of these two (templates below)
LEARNED_STEPS = ("learned_program", "learned_evidence")
ALL_MODELS = (*STAGE_MODELS, ENSEMBLE, FUSED, LEARNED)
# What a deployment needs: the ensemble and its steps. The fused variant duplicates the backbone
# (memory, load time) and is exported on request (`--model moodwatch_fused`, the bench does), as is the
# learned-proposal model (`--model moodwatch_learned`, for MOODWATCH_REGION_PROPOSALS=learned).
DEFAULT_MODELS = (*STAGE_MODELS, ENSEMBLE)
KINDS = ("cpu", "gpu")

# What each model needs in its version folder.
ASSETS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone_spec", "backbone_state"),
    "retrieval": ("heads", "index"),
    "heads": ("heads",),
    "regions": ("heads", "backbone_spec", "warmup"),
    ENSEMBLE: (),
    FUSED: ("backbone_spec", "backbone_state", "heads", "index", "warmup"),
    LEARNED: ("backbone_spec", "backbone_state", "heads", "index", "proposer", "warmup_size"),
    "learned_program": ("warmup_size",),  # + 1/model.onnx
    "learned_evidence": ("index",),
}
# With the python backend on a CPU profile, the backbone, fused and learned models also get backbone.onnx
# and run it through ONNX Runtime (pipelines/onnx_backbone.py); with --backbone-backend onnxruntime
# the `backbone` model is the ONNX graph itself, served by Triton's onnxruntime backend.
# With --backbone-backend onnxruntime, moodwatch_learned becomes an ensemble: the whole learned analysis
# as one ONNX graph (`learned_program`) + the sentence lookup (`learned_evidence`, python).
BACKBONE_BACKENDS = ("python", "onnxruntime")
ONNX_TEMPLATES = {
    "backbone": "backbone_onnxruntime",
    LEARNED: "moodwatch_learned_ensemble",
    "learned_program": "learned_program_onnxruntime",
}
TENSORRT_FP16 = (
    'optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt"\n'
    '  parameters { key: "precision_mode" value: "FP16" }\n'
    '  parameters { key: "max_workspace_size_bytes" value: "2147483648" }\n'
    '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
    '  parameters { key: "trt_engine_cache_path" value: "/tmp/moodwatch-trt" } } ] } }'
)

_CPUS = os.cpu_count() or 1

# Deployment profiles. CPU: one instance per model (torch parallelises inside an op; more
# instances only fight for the same cores), the backbone gets the cores, the small stages one
# thread each. GPU: two backbone instances so one copies while the other computes; retrieval
# stays on the CPU (faiss-cpu), the other stages on the GPU; warmup at the full batch so the
# CUDA allocator and kernels are ready before the first real request.
PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {
        "max_batch_size": 32,
        "preferred_batch_sizes": (8, 16, 32),
        "queue_delay_us": 2000,
        "warmup_batch": 1,
        "instances": {
            "backbone": ("KIND_CPU", 1),
            "retrieval": ("KIND_CPU", 1),
            "heads": ("KIND_CPU", 1),
            "regions": ("KIND_CPU", 1),
            FUSED: ("KIND_CPU", 1),
            LEARNED: ("KIND_CPU", 1),
            "learned_program": ("KIND_CPU", 1),
        },
        # 0 = torch default
        "torch_threads": {"backbone": 0, "retrieval": 1, "heads": 1, "regions": 1, FUSED: 0, LEARNED: 0},
    },
    "gpu": {
        "max_batch_size": 64,
        "preferred_batch_sizes": (16, 32, 64),
        "queue_delay_us": 1000,
        "warmup_batch": 64,
        "instances": {
            "backbone": ("KIND_GPU", 2),
            "retrieval": ("KIND_CPU", 2),
            "heads": ("KIND_GPU", 1),
            "regions": ("KIND_GPU", 1),
            FUSED: ("KIND_GPU", 2),
            LEARNED: ("KIND_GPU", 2),
            "learned_program": ("KIND_GPU", 2),
        },
        "torch_threads": {"backbone": 2, "retrieval": 1, "heads": 1, "regions": 1, FUSED: 2, LEARNED: 2},
    },
}


class ExportError(RuntimeError):
    """The inputs of an export do not fit together (or a template is broken)."""


@dataclass
class ExportResult:
    repo: Path
    kind: str
    models: list[str]
    versions: dict[str, str]
    contract: dict[str, Any]
    files: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "repo": str(self.repo),
            "kind": self.kind,
            "models": self.models,
            "versions": self.versions,
            "contract": self.contract,
            "files": self.files,
        }


def export_repository(
    heads_path: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    out_repo: str | os.PathLike[str],
    kind: str = "cpu",
    *,
    image_encoder: str | ImageBackbone = "efficientnet-lite0",
    retrieval_k: int = 3,
    candidates: int = EvidenceRanking().candidates,
    max_regions: int | None = None,
    max_batch_size: int | None = None,
    models: Iterable[str] | None = None,
    templates: str | os.PathLike[str] = TEMPLATES_DIR,
    backbone_backend: str = "python",
    proposer_path: str | os.PathLike[str] | None = None,
    regions_top_k: int = AnalyzerOptions().regions_top_k,
    region_alpha: float = AnalyzerOptions().region_alpha,
) -> ExportResult:
    """Render the templates for ``kind`` into ``out_repo`` with the weights and index they need.

    ``heads_path``: a heads checkpoint (``pipelines.checkpoints.save_heads``) -- copied as is, so the
    server loads exactly the weights the local backend loads. ``index_dir``: a saved retrieval
    index (``SentenceDatabase.save``). ``image_encoder``: the backbone spec ("efficientnet-lite0",
    "tiny-random:SEED", a Hugging Face id or folder); the server rebuilds the architecture from the
    spec and loads the exported state dict. ``max_regions``: the most region candidates per image
    the client may send (default: the number of spectral clusters, one box per cluster).
    ``backbone_backend``: "python" (torch, or ONNX Runtime inside the python model on a CPU profile when
    onnxruntime is installed) or "onnxruntime" (Triton's onnxruntime backend, TensorRT FP16 on the GPU
    profile; needs the official tritonserver image).
    ``proposer_path``, ``regions_top_k``, ``region_alpha``: the learned proposer checkpoint
    (``pipelines.regions.load_proposer``; default the shipped one) and the AR top-K the `moodwatch_learned`
    model returns (only read when that model is selected).
    """
    if kind not in KINDS:
        raise ExportError(f"kind must be one of {KINDS}, got {kind!r}")
    if backbone_backend not in BACKBONE_BACKENDS:
        raise ExportError(f"backbone_backend must be one of {BACKBONE_BACKENDS}, got {backbone_backend!r}")
    selected = _select_models(models)
    profile = PROFILES[kind]
    templates = Path(templates)
    if not (templates / "_shared" / SHARED_FILE).is_file():
        raise ExportError(
            f"no model repository templates at {templates} (expected the project's triton_repo/ folder); run the "
            f"export from a source checkout or set MOODWATCH_TRITON_TEMPLATES"
        )
    out_repo = Path(out_repo).resolve()
    if out_repo == templates.resolve():
        raise ExportError(f"{out_repo} holds the templates; export to another folder (e.g. artifacts/triton_repo)")

    heads_file, heads = _heads(heads_path)
    database = _database(index_dir)
    backbone = image_encoder if isinstance(image_encoder, ImageBackbone) else load_image_backbone(image_encoder, "cpu")
    spec = image_encoder if isinstance(image_encoder, str) else _spec_of(backbone)
    _check_compatible(backbone, heads, database)
    if retrieval_k < 1:
        raise ExportError("retrieval_k must be >= 1")
    k = min(int(retrieval_k), len(database))
    m = min(max(int(candidates), k), len(database))  # evidence candidates, the first k of them read by the fusion
    max_regions = int(max_regions or RegionSettings().clusters)
    proposer_file = Path(proposer_path or DEFAULT_PROPOSER).resolve()
    proposer = _checked_proposer(proposer_file, backbone, regions_top_k) if LEARNED in selected else None
    region_proposals = proposer_version(proposer) if proposer is not None else None
    if LEARNED in selected and backbone_backend == "onnxruntime":
        reason = unsupported_reason(database)
        if reason:
            raise ExportError(
                f"{LEARNED} on the onnxruntime backend: {reason} (build the index with `moodwatch index build --index-type flat`)"
            )
        selected = list(dict.fromkeys([*(m for m in selected if m != LEARNED), *LEARNED_STEPS, LEARNED]))
    mbs = int(max_batch_size or profile["max_batch_size"])

    versions = analyzer_versions("triton", backbone.name, heads, database).model_dump()
    contract = {
        "input_size": list(backbone.input_size),
        "resize_mode": backbone.resize_mode,
        "max_regions": max_regions,
        "retrieval_k": k,
        "candidates": m,
        "max_batch_size": mbs,
    }
    in_python_ort = kind == "cpu" and onnxruntime_available()
    common = {
        "backbone_runtime": "onnxruntime" if in_python_ort else "torch",
        "onnx_optimization": TENSORRT_FP16 if kind == "gpu" else "",
        "max_batch_size": mbs,
        "preferred_batch_sizes": ", ".join(str(b) for b in profile["preferred_batch_sizes"] if b <= mbs) or str(mbs),
        "queue_delay_us": profile["queue_delay_us"],
        "warmup_batch": min(profile["warmup_batch"], mbs),
        "image_h": backbone.input_size[0],
        "image_w": backbone.input_size[1],
        "feature_dim": backbone.feature_dim,
        "fmap_h": backbone.spatial_size[0],
        "fmap_w": backbone.spatial_size[1],
        "text_dim": database.feature_dim,
        "retrieval_k": k,
        "candidates": m,
        "max_regions": max_regions,
        "regions_top_k": int(regions_top_k),
        "region_alpha": float(region_alpha),
        "region_proposals": region_proposals,
        "contract_parameters": _parameters(
            {  # region_proposals: set by the client (selective search) or by moodwatch_learned's own parameter
                **{
                    f"moodwatch.{key}": value
                    for key, value in versions.items()
                    if key not in ("backend", "region_proposals")
                },
                "moodwatch.retrieval_k": str(k),
                "moodwatch.resize_mode": backbone.resize_mode,
                "moodwatch.export_kind": kind,
                "moodwatch.exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        ),
    }

    def learned_program() -> LearnedProgram:  # the whole learned analysis, for the ONNX graphs below
        return LearnedProgram(backbone, heads, proposer, database, m, k, int(regions_top_k), region_alpha)

    out_repo.parent.mkdir(parents=True, exist_ok=True)
    staging = out_repo.parent / f".{out_repo.name}.export-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    files: dict[str, list[str]] = {}
    try:
        assets = _Assets(staging, heads_file, database, backbone, spec, max_regions, proposer_file)
        for name in selected:
            onnx_served = name in ONNX_TEMPLATES and backbone_backend == "onnxruntime"
            template = templates / (ONNX_TEMPLATES[name] if onnx_served else name)
            if not (template / "config.pbtxt").is_file():
                raise ExportError(f"no template for model {name!r} under {templates}")
            instance_kind, count = profile["instances"].get(name, ("KIND_CPU", 1))
            values = {
                **common,
                "instance_kind": instance_kind,
                "instance_count": count,
                "torch_threads": profile["torch_threads"].get(name, 1),
            }
            model_dir = staging / name
            version_dir = model_dir / "1"
            version_dir.mkdir(parents=True)
            (model_dir / "config.pbtxt").write_text(_render(template / "config.pbtxt", values))
            if (template / "1" / "model.py").is_file():
                shutil.copy2(template / "1" / "model.py", version_dir / "model.py")
                shutil.copy2(templates / "_shared" / SHARED_FILE, version_dir / SHARED_FILE)
            if onnx_served and name == "backbone":
                export_backbone_onnx(backbone, version_dir / "model.onnx", raw_pixels=True)
            elif onnx_served and name == "learned_program":
                export_program_onnx(learned_program(), version_dir / "model.onnx", triton_inputs=True)
                assets.write("warmup_size", model_dir)
            elif onnx_served:  # the ensemble: a config only
                pass
            else:
                for asset in ASSETS[name]:
                    assets.write(asset, model_dir)
                if in_python_ort and "backbone_state" in ASSETS[name]:
                    assets.write("backbone_onnx", model_dir)
                if in_python_ort and name == LEARNED and unsupported_reason(database) is None:
                    export_program_onnx(learned_program(), version_dir / "learned.onnx")
            files[name] = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*") if p.is_file())
        result = ExportResult(out_repo, kind, list(selected), versions, contract, files)
        (staging / "export.json").write_text(
            json.dumps(
                {
                    **result.to_json(),
                    "analyzer": ANALYZER_VERSION,
                    "image_encoder_spec": spec,
                    "heads_path": str(heads_file),
                    "index_dir": str(Path(index_dir).resolve()),
                    **(
                        {"proposer_path": str(proposer_file), "region_proposals": region_proposals}
                        if region_proposals
                        else {}
                    ),
                    "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )
        _swap_in(staging, out_repo)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


# -- inputs ---------------------------------------------------------------------------------------


def _select_models(models: Iterable[str] | None) -> list[str]:
    selected = list(dict.fromkeys(models)) if models is not None else list(DEFAULT_MODELS)
    unknown = [m for m in selected if m not in ALL_MODELS]
    if unknown:
        raise ExportError(f"unknown models {unknown}; choose from {ALL_MODELS}")
    if ENSEMBLE in selected:  # the ensemble is useless without its steps
        selected = list(dict.fromkeys([*STAGE_MODELS, *selected]))
    return selected


def _heads(heads_path: str | os.PathLike[str]) -> tuple[Path, MoodHeads]:
    path = Path(heads_path)
    heads, _card = load_heads(path)  # raises CheckpointError with a hint when missing
    return path.resolve(), heads


def _database(index_dir: str | os.PathLike[str]) -> SentenceDatabase:
    try:
        return SentenceDatabase.load(index_dir)
    except IndexMismatchError as exc:
        raise ExportError(f"retrieval index {index_dir}: {exc}") from exc


def _spec_of(backbone: ImageBackbone) -> str:
    name = backbone.name
    if name.startswith("tiny-random-cnn@"):
        return f"tiny-random:{name.split('@', 1)[1]}"
    return name.split("@", 1)[0]


def _checked_proposer(path: Path, backbone: ImageBackbone, top_k: int) -> LearnedProposer:
    """The learned proposer at ``path``, when it fits the backbone's feature map, else ExportError."""
    if top_k < 1:
        raise ExportError(f"{LEARNED} returns the top regions_top_k regions; regions_top_k must be >= 1, got {top_k}")
    if not path.is_file():
        raise ExportError(f"no learned proposer at {path} (train one with `python -m pipelines.proposal_distill`)")
    proposer = load_proposer(path)
    mismatch = proposer_mismatch(proposer, backbone)
    if mismatch:
        raise ExportError(
            f"{path}: {mismatch} (export {LEARNED} with a proposer trained on this backbone: --proposer PATH)"
        )
    return proposer


def _check_compatible(backbone: ImageBackbone, heads: MoodHeads, database: SentenceDatabase) -> None:
    cfg = heads.config
    problems = []
    if cfg.image_dim != backbone.feature_dim:
        problems.append(
            f"heads expect {cfg.image_dim}-d image features, backbone {backbone.name} gives {backbone.feature_dim}"
        )
    if cfg.text_dim != database.feature_dim:
        problems.append(
            f"heads expect {cfg.text_dim}-d text features, index holds {database.feature_dim}-d ({database.text_encoder})"
        )
    if heads.aligner.out_dim != database.embedding_dim:
        problems.append(f"aligner embeds into {heads.aligner.out_dim}-d, index searches {database.embedding_dim}-d")
    if problems:
        raise ExportError("heads, backbone and index do not fit together: " + "; ".join(problems))


# -- writing --------------------------------------------------------------------------------------


class _Assets:
    """Writes each asset once (under the first model that needs it) and hard-links it elsewhere."""

    def __init__(
        self,
        root: Path,
        heads_file: Path,
        database: SentenceDatabase,
        backbone: ImageBackbone,
        spec: str,
        max_regions: int,
        proposer_file: Path,
    ) -> None:
        self.root, self.heads_file, self.database, self.backbone = root, heads_file, database, backbone
        self.spec, self.max_regions, self.proposer_file = spec, max_regions, proposer_file
        self._first: dict[str, Path] = {}

    def write(self, asset: str, model_dir: Path) -> None:
        target = model_dir / ("warmup" if asset.startswith("warmup") else "1")
        source = self._first.get(asset)
        if source is not None:
            _link_tree(source, target, self._names(asset))
            return
        target.mkdir(parents=True, exist_ok=True)
        if asset == "heads":
            shutil.copy2(self.heads_file, target / "heads.pt")
        elif asset == "index":
            self.database.save(target / "index")
        elif asset == "backbone_spec":
            bb = self.backbone
            (target / "backbone.json").write_text(
                json.dumps(
                    {
                        "spec": self.spec,
                        "name": bb.name,
                        "input_size": list(bb.input_size),
                        "spatial_size": list(bb.spatial_size),
                        "stride_yx": list(bb.stride_yx),
                        "feature_dim": bb.feature_dim,
                        "resize_mode": bb.resize_mode,
                        "mean": bb.pixel_mean.flatten().tolist(),
                        "std": bb.pixel_std.flatten().tolist(),
                    },
                    indent=2,
                )
                + "\n"
            )
        elif asset == "backbone_state":
            state = {k: v.detach().cpu().contiguous() for k, v in self.backbone.state_dict().items()}
            torch.save(state, target / "backbone.pt")
        elif asset == "backbone_onnx":
            export_backbone_onnx(self.backbone, target / "backbone.onnx")
        elif asset == "warmup":
            boxes, count, size = warmup_boxes(self.max_regions)
            (target / "boxes").write_bytes(boxes.tobytes())
            (target / "box_count").write_bytes(count.tobytes())
            (target / "image_size").write_bytes(size.tobytes())
        elif asset == "warmup_size":
            (target / "image_size").write_bytes(warmup_boxes(1)[2].tobytes())
        elif asset == "proposer":
            shutil.copy2(self.proposer_file, target / "proposals.pt")
        else:  # pragma: no cover - ASSETS and this method are kept in step
            raise ExportError(f"unknown asset {asset}")
        self._first[asset] = target

    @staticmethod
    def _names(asset: str) -> list[str]:
        return {
            "heads": ["heads.pt"],
            "index": ["index"],
            "backbone_spec": ["backbone.json"],
            "backbone_state": ["backbone.pt"],
            "backbone_onnx": ["backbone.onnx"],
            "warmup": ["boxes", "box_count", "image_size"],
            "warmup_size": ["image_size"],
            "proposer": ["proposals.pt"],
        }[asset]


def warmup_boxes(max_regions: int, width: int = 640, height: int = 480) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A realistic region warmup sample: every slot filled with boxes of a multi-scale grid."""
    boxes = []
    for cells in (1, 2, 3, 4, 5, 6, 7, 8):
        w, h = width / cells, height / cells
        for j in range(cells):
            for i in range(cells):
                boxes.append((i * w, j * h, (i + 1) * w, (j + 1) * h))
    arr = np.asarray((boxes * (max_regions // len(boxes) + 1))[:max_regions], dtype=np.float32).reshape(max_regions, 4)
    return arr, np.asarray([max_regions], dtype=np.int32), np.asarray([width, height], dtype=np.int32)


def _link_tree(source_dir: Path, target_dir: Path, names: list[str]) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        src = source_dir / name
        dst = target_dir / name
        if src.is_dir():
            dst.mkdir()
            _link_tree(src, dst, [p.name for p in src.iterdir()])
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _render(template: Path, values: dict[str, Any]) -> str:
    try:
        return string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})
    except (KeyError, ValueError) as exc:
        raise ExportError(f"template {template}: {type(exc).__name__}: {exc}") from exc


def _parameters(values: dict[str, str]) -> str:
    lines = [
        f"parameters {{ key: {json.dumps(k)} value: {{ string_value: {json.dumps(str(v), ensure_ascii=False)} }} }}"
        for k, v in values.items()
    ]
    return "\n".join(lines)


def _swap_in(staging: Path, out_repo: Path) -> None:
    if out_repo.exists():
        if not out_repo.is_dir():
            raise ExportError(f"{out_repo} exists and is not a folder")
        if any(out_repo.iterdir()) and not (out_repo / "export.json").is_file():
            raise ExportError(f"{out_repo} is not empty and holds no export.json; refusing to replace it")
        old = out_repo.parent / f".{out_repo.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_repo, old)
        os.replace(staging, out_repo)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_repo)
