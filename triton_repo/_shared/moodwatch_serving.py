"""Request handling shared by the moodwatch python-backend models (TritonPythonModel contract).

``pipelines/export.py`` copies this file into every python model's version folder (next to
model.py), so each model version is self-contained (a model repository on S3/GCS is downloaded
one model folder at a time). The numbers themselves come from the project's own code
(``pipelines.analyze`` stage functions), exactly what ``LocalAnalyzer`` runs; this module only
turns Triton requests into batched tensors and back.

Contract kept by every stage:
- ``initialize`` loads everything or raises (the model then never becomes READY, and the reason
  is in the server log); ``finalize`` releases it.
- ``execute`` gets the requests the dynamic batcher grouped, answers each with exactly one
  ``InferenceResponse`` in order; inputs are concatenated into one batch, run once, and split
  back. A request that cannot be parsed, or that makes the batched run fail, gets its own
  ``TritonError`` response; the other requests of the group still get their outputs (the
  group is re-run one request at a time to find the culprit).
- No stage keeps per-request state, so any number of instances can run side by side.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Every model.py imports this module first. The python-backend stub embeds its own interpreter and
# ignores PYTHONPATH. Whoever starts
# tritonserver (workers/devstack/triton_server.py does) lists the project and its environment here; they go
# first on sys.path *before numpy is imported*: the stub's interpreter may carry numpy 2.x, with
# which python-backend outputs came back empty (numpy 1.26 works). In a Triton image with the
# project installed the variable is unset and nothing changes.
for _path in reversed([p for p in os.environ.get("MOODWATCH_TRITON_PYTHONPATH", "").split(os.pathsep) if p]):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

SHARED_FILE = "moodwatch_serving.py"
BACKBONE_JSON = "backbone.json"
BACKBONE_STATE = "backbone.pt"
BACKBONE_ONNX = "backbone.onnx"  # optional: written by the CPU export when onnxruntime is installed
HEADS_FILE = "heads.pt"
INDEX_DIR = "index"
PROPOSER_FILE = "proposals.pt"
LEARNED_ONNX = "learned.onnx"  # optional: moodwatch_learned's whole analysis as one graph (CPU export, flat index)


class BackboneGeometry:
    """What the region stage needs of the backbone: where an original-image box lies on the feature
    map. Uses ``ImageBackbone.to_feature_coords`` itself (it reads only input_size and stride_yx),
    so the mapping is the one LocalAnalyzer uses, without loading the backbone's weights."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from models.encoders import ImageBackbone

        self.input_size = tuple(int(v) for v in spec["input_size"])
        self.stride_yx = tuple(float(v) for v in spec["stride_yx"])
        self._to_feature_coords = ImageBackbone.to_feature_coords

    def to_feature_coords(self, boxes, width: int, height: int) -> torch.Tensor:
        return self._to_feature_coords(self, boxes, width, height)


class Stage:
    """Base of every moodwatch python model. Subclasses set INPUTS and define load() and run()."""

    INPUTS: tuple[str, ...] = ()

    # -- TritonPythonModel contract ---------------------------------------------------------------
    def initialize(self, args: dict[str, str]) -> None:
        started = time.monotonic()
        self.model_config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.folder = Path(args["model_repository"]) / args["model_version"]
        self.params = {k: v.get("string_value", "") for k, v in self.model_config.get("parameters", {}).items()}
        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args.get('model_instance_device_id', '0')}" if gpu else "cpu")
        threads = int(self.params.get("torch_threads", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in self.model_config["output"]
        }
        self.output_names = [o["name"] for o in self.model_config["output"]]
        self.load()
        runner = getattr(self, "runner", None)
        runtime = (
            "" if runner is None else f", backbone runtime {'torch' if runner is self.backbone else 'onnxruntime'}"
        )
        if getattr(self, "program", None) is not None:
            runtime += ", learned program onnxruntime"
        pb_utils.Logger.log_info(
            f"moodwatch {self.model_name}: loaded from {self.folder} on {self.device} in {time.monotonic() - started:.1f}s"
            f" (torch threads {torch.get_num_threads()}, numpy {np.__version__}{runtime})"
        )

    def execute(self, requests: list) -> list:
        responses: list[Any] = [None] * len(requests)
        parsed: list[tuple[int, dict[str, np.ndarray]]] = []
        for i, request in enumerate(requests):
            try:
                parsed.append((i, self._inputs(request)))
            except Exception as exc:  # noqa: BLE001 - this request only
                responses[i] = _error(f"{self.model_name}: bad request: {exc}")
        if parsed:
            try:
                self._answer(parsed, responses)
            except Exception:  # noqa: BLE001 - isolate the request that broke the batch
                for i, inputs in parsed:
                    try:
                        self._answer([(i, inputs)], responses)
                    except Exception as exc:  # noqa: BLE001 - this request's error response, not the batch's
                        responses[i] = _error(f"{self.model_name}: {type(exc).__name__}: {exc}")
        return responses

    def finalize(self) -> None:
        self.unload()

    # -- to implement -----------------------------------------------------------------------------
    def load(self) -> None:
        raise NotImplementedError

    def unload(self) -> None:
        pass

    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Batched inputs (first axis = images) -> outputs by name (first axis = images)."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------------
    def _inputs(self, request) -> dict[str, np.ndarray]:
        out = {}
        for name in self.INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name}")
            out[name] = tensor.as_numpy()
        sizes = {len(v) for v in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: { {k: v.shape for k, v in out.items()} }")
        return out

    def _answer(self, parsed: list[tuple[int, dict[str, np.ndarray]]], responses: list) -> None:
        if len(parsed) == 1:
            batch = parsed[0][1]
        else:
            batch = {name: np.concatenate([inputs[name] for _, inputs in parsed]) for name in self.INPUTS}
        with torch.inference_mode():
            outputs = self.run(batch)
        start = 0
        for i, inputs in parsed:
            n = len(next(iter(inputs.values())))
            tensors = [
                pb_utils.Tensor(name, _as_dtype(outputs[name][start : start + n], self.output_dtypes[name]))
                for name in self.output_names
            ]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            start += n

    # -- loaders shared by the stages -------------------------------------------------------------
    def load_backbone(self):
        from models.encoders import load_image_backbone

        spec = json.loads((self.folder / BACKBONE_JSON).read_text())
        backbone = load_image_backbone(spec["spec"], "cpu")
        state = self.folder / BACKBONE_STATE
        if state.is_file():
            backbone.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
        if backbone.name != spec["name"]:
            raise RuntimeError(f"backbone {spec['spec']!r} resolved to {backbone.name}, exported as {spec['name']}")
        return backbone.to(self.device).eval()

    def load_geometry(self) -> BackboneGeometry:
        return BackboneGeometry(json.loads((self.folder / BACKBONE_JSON).read_text()))

    def load_heads(self):
        from pipelines.checkpoints import load_heads

        heads, _card = load_heads(self.folder / HEADS_FILE, device=str(self.device))
        return heads.eval()

    def load_database(self):
        from pipelines.retrieval import SentenceDatabase

        database = SentenceDatabase.load(self.folder / INDEX_DIR)
        self.evidence_json = np.array(
            [json.dumps(s.to_json(), ensure_ascii=False).encode("utf-8") for s in database.sentences], dtype=np.object_
        )
        return database

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)


# -- the stages ------------------------------------------------------------------------------------


def normalise(backbone, pixels: torch.Tensor) -> torch.Tensor:
    """Resized 0..255 pixels -> the backbone's input; the same float ops as ImageBackbone.preprocess."""
    return ((pixels.cpu() - backbone.pixel_mean.cpu()) / backbone.pixel_std.cpu()).to(backbone.device)


def backbone_runner(stage: Stage, backbone):
    """The backbone as this instance runs it: the export's ``backbone.onnx`` through ONNX Runtime on a CPU
    instance (the CPU profile's ``backbone_runtime``; 4-7x faster than eager torch there), else torch."""
    onnx_file = stage.folder / BACKBONE_ONNX
    if stage.params.get("backbone_runtime") != "onnxruntime" or stage.device.type != "cpu" or not onnx_file.is_file():
        return backbone
    from pipelines.onnx_backbone import checked_onnx_runner

    return checked_onnx_runner(backbone, onnx_file)


class BackboneStage(Stage):
    INPUTS = ("PIXELS",)

    def load(self) -> None:
        self.backbone = self.load_backbone()
        self.runner = backbone_runner(self, self.backbone)

    def run(self, batch):
        feat_map, pooled = self.runner(
            normalise(self.backbone, torch.from_numpy(np.ascontiguousarray(batch["PIXELS"])))
        )
        return {"FEATURE_MAP": _np(feat_map), "POOLED": _np(pooled)}


class RetrievalStage(Stage):
    INPUTS = ("POOLED",)

    def load(self) -> None:
        from pipelines.analyze import retrieval_stage

        self.heads = self.load_heads()
        self.database = self.load_database()
        self.k, self.candidates = int(self.params["retrieval_k"]), int(self.params["candidates"])
        self._retrieve = retrieval_stage

    def run(self, batch):
        retrieval = self._retrieve(self.heads, self.database, self.tensor(batch["POOLED"]), self.candidates)
        return {
            "RETRIEVAL_SCORES": retrieval.scores,
            "RETRIEVAL_IDS": retrieval.ids,
            "TEXT_FEATURES": np.asarray(retrieval.features[:, : self.k], dtype=np.float32),
            "EVIDENCE": self.evidence_json[retrieval.ids],
        }


class EvidenceStage(Stage):
    """Retrieved sentence ids -> the sentences as JSON (the onnxruntime-backend moodwatch_learned's last step)."""

    INPUTS = ("RETRIEVAL_IDS",)

    def load(self) -> None:
        self.database = self.load_database()

    def run(self, batch):
        ids = np.asarray(batch["RETRIEVAL_IDS"], dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self.database)):
            raise ValueError(f"RETRIEVAL_IDS outside the index's {len(self.database)} sentences")
        return {"EVIDENCE": self.evidence_json[ids]}


class HeadsStage(Stage):
    INPUTS = ("FEATURE_MAP", "POOLED", "TEXT_FEATURES", "POST_TEXT", "POST_TEXT_MASK")

    def load(self) -> None:
        from pipelines.analyze import heads_stage

        self.heads = self.load_heads()
        self._heads = heads_stage

    def run(self, batch):
        outputs = self._heads(
            self.heads,
            self.tensor(batch["FEATURE_MAP"]),
            self.tensor(batch["POOLED"]),
            self.tensor(batch["TEXT_FEATURES"]),
            self.tensor(batch["POST_TEXT"]),
            self.tensor(batch["POST_TEXT_MASK"]).reshape(-1).bool(),
        )
        return dict(zip(HEADS_OUTPUTS, (_np(t) for t in outputs)))


class RegionsStage(Stage):
    INPUTS = ("FEATURE_MAP", "BOXES", "BOX_COUNT", "IMAGE_SIZE")

    def load(self) -> None:
        self.heads = self.load_heads()
        self.geometry = self.load_geometry()

    def run(self, batch):
        return {"REGION_DISTS": region_dists(self.heads, self.geometry, self.tensor(batch["FEATURE_MAP"]), batch)}


def region_dists(heads, geometry, feat_map: torch.Tensor, batch: dict[str, np.ndarray]) -> np.ndarray:
    """[B, R, 8]: the distribution of every candidate box (rows past BOX_COUNT stay 0)."""
    from pipelines.analyze import region_distributions
    from pipelines.regions import RegionCandidates

    boxes, counts, sizes = batch["BOXES"], batch["BOX_COUNT"].reshape(-1), batch["IMAGE_SIZE"]
    out = np.zeros((boxes.shape[0], boxes.shape[1], 8), dtype=np.float32)
    for i in range(boxes.shape[0]):
        n = int(counts[i])
        if n <= 0:
            continue
        if n > boxes.shape[1]:
            raise ValueError(f"BOX_COUNT {n} > {boxes.shape[1]} boxes")
        width, height = int(sizes[i][0]), int(sizes[i][1])
        if width < 1 or height < 1:
            raise ValueError(f"IMAGE_SIZE must be positive, got {width}x{height}")
        candidates = RegionCandidates(np.ascontiguousarray(boxes[i, :n], dtype=np.float32), np.zeros(n, np.float32))
        out[i, :n] = _np(region_distributions(heads, geometry, feat_map[i : i + 1], candidates, width, height))
    return out


class FusedStage(Stage):
    """Every stage in one process: the same outputs as the `moodwatch` ensemble, without the hops."""

    INPUTS = ("PIXELS", "BOXES", "BOX_COUNT", "IMAGE_SIZE", "POST_TEXT", "POST_TEXT_MASK")

    def load(self) -> None:
        from pipelines.analyze import heads_stage, retrieval_stage

        self.backbone = self.load_backbone()
        self.runner = backbone_runner(self, self.backbone)
        self.heads = self.load_heads()
        self.database = self.load_database()
        self.k, self.candidates = int(self.params["retrieval_k"]), int(self.params["candidates"])
        self._retrieve, self._heads = retrieval_stage, heads_stage

    def run(self, batch):
        feat_map, outputs = self.global_outputs(batch)
        return {**outputs, "REGION_DISTS": region_dists(self.heads, self.backbone, feat_map, batch)}

    def global_outputs(self, batch) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Backbone -> retrieval + heads: the feature map and the outputs every fused model returns."""
        feat_map, pooled = self.runner(
            normalise(self.backbone, torch.from_numpy(np.ascontiguousarray(batch["PIXELS"])))
        )
        retrieval = self._retrieve(self.heads, self.database, pooled, self.candidates)
        text_feats = torch.as_tensor(retrieval.features[:, : self.k], dtype=feat_map.dtype, device=feat_map.device)
        outputs = self._heads(
            self.heads,
            feat_map,
            pooled,
            text_feats,
            self.tensor(batch["POST_TEXT"]).to(feat_map.dtype),
            self.tensor(batch["POST_TEXT_MASK"]).reshape(-1).bool(),
        )
        return feat_map, {
            **dict(zip(HEADS_OUTPUTS, (_np(t) for t in outputs))),
            "RETRIEVAL_SCORES": retrieval.scores,
            "RETRIEVAL_IDS": retrieval.ids,
            "EVIDENCE": self.evidence_json[retrieval.ids],
        }


class LearnedStage(FusedStage):
    """FusedStage with the regions proposed here: learned proposals from the feature map -> batched RoI-align
    -> region scores -> AR top-K (pipelines.regions.learned_top_regions, LocalAnalyzer's learned path), so the
    client sends no boxes and gets the top-K back."""

    INPUTS = ("PIXELS", "IMAGE_SIZE", "POST_TEXT", "POST_TEXT_MASK")

    def load(self) -> None:
        from pipelines.regions import learned_top_regions, load_proposer, pad_top_regions, proposer_version

        super().load()
        self.proposer = load_proposer(self.folder / PROPOSER_FILE, self.device)
        exported = self.params.get("moodwatch.region_proposals")
        if proposer_version(self.proposer) != exported:
            raise RuntimeError(f"{PROPOSER_FILE} is {proposer_version(self.proposer)}, exported as {exported}")
        self.top_k, self.alpha = int(self.params["regions_top_k"]), float(self.params["region_alpha"])
        self._top_regions = learned_top_regions
        self._pad = lambda top: pad_top_regions(top, self.top_k)  # the proposer kept fewer than K: masked slots
        self.program = self.load_program()

    def load_program(self):
        """The export's learned.onnx through ONNX Runtime (CPU instances running the backbone there), checked
        against the same analysis in torch first; None: the stages below run in torch."""
        program_file = self.folder / LEARNED_ONNX
        if self.runner is self.backbone or not program_file.is_file():
            return None
        from pipelines.onnx_learned import LearnedProgram, OnnxLearnedProgram, check_program_parity

        program = LearnedProgram(
            self.backbone, self.heads, self.proposer, self.database, self.candidates, self.k, self.top_k, self.alpha
        )
        runner = OnnxLearnedProgram(program_file, threads=torch.get_num_threads())
        check_program_parity(program, runner)
        return runner

    def run(self, batch):
        sizes = self.tensor(batch["IMAGE_SIZE"]).long()
        if bool((sizes < 1).any()):
            raise ValueError(f"IMAGE_SIZE must be positive, got {batch['IMAGE_SIZE'].tolist()}")
        if self.program is not None:
            pixels = normalise(self.backbone, torch.from_numpy(np.ascontiguousarray(batch["PIXELS"])))
            out = self.program(pixels, sizes, self.tensor(batch["POST_TEXT"]), self.tensor(batch["POST_TEXT_MASK"]))
            arrays = {name: t.numpy() for name, t in out.items()}
            return {**arrays, "EVIDENCE": self.evidence_json[arrays["RETRIEVAL_IDS"]]}
        feat_map, outputs = self.global_outputs(batch)
        boxes, objectness, mask = self.proposer(feat_map, sizes)
        top = self._pad(self._top_regions(self.heads, feat_map, boxes, objectness, mask, self.top_k, self.alpha))
        return {
            **outputs,
            "REGION_BOXES": _np(top.boxes),
            "REGION_OBJECTNESS": _np(top.objectness),
            "REGION_DISTS": _np(top.dists),
            "REGION_MASK": top.mask.cpu().numpy(),
        }


# -- small helpers ---------------------------------------------------------------------------------


HEADS_OUTPUTS = ("POLARITY", "POLARITY_NO_TEXT", "EMOTIONS", "EMOTIONS6")  # pipelines.analyze.heads_stage order


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def _as_dtype(array: np.ndarray, dtype) -> np.ndarray:
    if dtype == np.object_ or array.dtype == dtype:
        return np.ascontiguousarray(array)
    return np.ascontiguousarray(array.astype(dtype))


def _error(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))
