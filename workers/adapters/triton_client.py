"""The Triton backend of the Analyzer: the same analysis as LocalAnalyzer, with the models on tritonserver.

Selected by ``MOODWATCH_BACKEND=triton`` (workers/backends.build_analyzer); the worker code does
not change. Per micro-batch:

1. region proposals for every image in a thread pool (OpenCV, client-side: see the comment in
   triton_repo/regions/config.pbtxt for why they run in the worker), while the images are resized
   to the model's input size with ``ImageBackbone.preprocess`` itself (so the pixels are the ones
   LocalAnalyzer feeds its backbone);
2. the posts' words, where pipelines.text lets the model read them, through the text encoder here
   (``pipelines.analyze.text_stage``, MiniLM, a few ms a post), so the server gets features, not strings;
3. one gRPC request per ``max_batch_size`` images (normally one per micro-batch) to the
   ``moodwatch`` ensemble: PIXELS, BOXES (padded to the model's maximum) + BOX_COUNT, IMAGE_SIZE,
   POST_TEXT + POST_TEXT_MASK;
4. the outputs (global polarity with and without text, emotions, evidence candidates + scores, per-candidate region
   distributions) go through ``pipelines.analyze.compose_analysis``, the very code LocalAnalyzer
   ends with, so both backends give the same ImageAnalysis.

With ``MOODWATCH_REGION_PROPOSALS=learned`` the model is ``moodwatch_learned`` (recognised from its config: a
REGION_BOXES output, no BOXES input): no proposals here, the request is PIXELS, IMAGE_SIZE and the post text, and
the server returns the AR top-K regions, composed as LocalAnalyzer's learned path composes them
(``top_regions_as_candidates`` -> ``compose_analysis``). A client whose proposal method is not the served
model's is refused at connect (``BackendUnavailable``).

Failure handling (the worker's contract, pipelines/analyzer_api.py):
- server unreachable, model missing / not ready / unloaded, request timeout, server overloaded:
  ``BackendUnavailable`` with a message that says which and where. The worker keeps the batch,
  backs off and retries without committing offsets. UNAVAILABLE is first retried here a few times
  with exponential backoff (a restarting server, a dropped connection); timeouts are not retried
  here (an overloaded server does not need the same batch again at once).
- the server rejects *this input* (a per-request error of a python model, invalid argument):
  ``AnalysisFailed``; the worker then analyses the batch image by image and dead-letters only the
  culprit. A changed model contract (e.g. a redeploy with another input size) is re-read first.

Sync gRPC client, not asyncio: the worker is a synchronous loop, a gRPC channel multiplexes the
concurrent requests of a split micro-batch (sent from a small thread pool), and the server-side
dynamic batcher merges requests from all the workers. The client is thread-safe.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from models.encoders import ImageBackbone, TextEncoder
from pipelines.analyze import (
    ANALYZER_VERSION,
    HEADS_OUTPUTS,
    AnalyzerOptions,
    GlobalOutputs,
    compose_analysis,
    text_stage,
    text_uses,
)
from pipelines.analyzer_api import AnalysisFailed, BackendUnavailable
from pipelines.regions import RegionCandidates, TopRegions, region_candidates, top_regions_as_candidates
from pipelines.retrieval import Sentence
from pipelines.text import PostText, TextUse
from schemas.results import ImageAnalysis, ModelVersions
from workers.common.logs import get_logger
from workers.common.settings import TritonSettings

log = get_logger("moodwatch.triton")

INPUTS = {
    "PIXELS": "FP32",
    "BOXES": "FP32",
    "BOX_COUNT": "INT32",
    "IMAGE_SIZE": "INT32",
    "POST_TEXT": "FP32",
    "POST_TEXT_MASK": "BOOL",
}
OUTPUTS = (
    "POLARITY",
    "POLARITY_NO_TEXT",
    "EMOTIONS",
    "EMOTIONS6",
    "RETRIEVAL_SCORES",
    "EVIDENCE",
    "REGION_DISTS",
)
# moodwatch_learned: the regions are proposed and ranked on the server
REGION_OUTPUTS = ("REGION_BOXES", "REGION_OBJECTNESS", "REGION_DISTS")  # TopRegions' first three fields
LEARNED_INPUTS = {name: INPUTS[name] for name in ("PIXELS", "IMAGE_SIZE", "POST_TEXT", "POST_TEXT_MASK")}
LEARNED_OUTPUTS = (
    *HEADS_OUTPUTS,
    "RETRIEVAL_SCORES",
    "EVIDENCE",
    "REGION_BOXES",
    "REGION_OBJECTNESS",
    "REGION_DISTS",
    "REGION_MASK",
)
_TRANSIENT = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_FOUND", "RESOURCE_EXHAUSTED", "CANCELLED", "ABORTED", "UNKNOWN")
_UNKNOWN = "unknown"


@dataclass(frozen=True)
class TritonOptions:
    """How to reach and call the server (from the MOODWATCH_TRITON_* settings)."""

    url: str = "127.0.0.1:8001"
    model: str = "moodwatch"
    timeout_s: float = 30.0  # one inference request, end to end
    connect_timeout_s: float = 5.0  # liveness / readiness / config calls
    retry_attempts: int = 3  # tries per request while the server answers UNAVAILABLE
    retry_backoff_s: float = 0.2  # first pause between those tries, doubled each time
    max_request_images: int | None = None  # split micro-batches above this (default: model max_batch_size)
    parallel_requests: int = 4


@dataclass(frozen=True)
class ModelContract:
    """What the client needs to know about the served model (read from its config)."""

    model: str
    input_size: tuple[int, int]
    resize_mode: str
    max_regions: int
    retrieval_k: int  # sentences the fusion reads
    candidates: int  # evidence candidates returned per image
    text_dim: int
    max_batch_size: int
    versions: ModelVersions
    learned: bool = False  # moodwatch_learned: regions proposed and ranked on the server
    top_k: int = 0  # regions the learned model returns per image
    region_proposals: str | None = None  # the learned model's proposer ("learned@<digest>")

    @property
    def inputs(self) -> dict[str, str]:
        return LEARNED_INPUTS if self.learned else INPUTS

    @property
    def outputs(self) -> tuple[str, ...]:
        return LEARNED_OUTPUTS if self.learned else OUTPUTS


class _NoBody(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.new_zeros((x.shape[0], 1, 1, 1)), x.new_zeros((x.shape[0], 1))


def pixel_resizer(input_size: tuple[int, int], resize_mode: str) -> ImageBackbone:
    """``ImageBackbone.preprocess`` with mean 0 and std 1: the resized 0..255 pixels, bit for bit the
    tensor the local backbone normalises (x - 0) / 1 == x; the server applies the normalisation."""
    return ImageBackbone(
        _NoBody(),
        name="client-resize",
        input_size=input_size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        resize_mode=resize_mode,
    )


class TritonAnalyzer:
    """Analyzer backed by the ``moodwatch`` model on tritonserver (pipelines.analyzer_api.Analyzer)."""

    def __init__(
        self,
        options: TritonOptions = TritonOptions(),
        analyzer_options: AnalyzerOptions = AnalyzerOptions(),
        text_encoder: TextEncoder | None = None,
    ) -> None:
        """``text_encoder``: encodes the posts' words in the worker (None: every post analysed image only)."""
        import tritonclient.grpc as grpcclient

        self.options = options
        self.analyzer_options = analyzer_options
        self.text_encoder = text_encoder
        self._grpc = grpcclient
        self._client = grpcclient.InferenceServerClient(options.url)
        self._contract: ModelContract | None = None
        self._resizer: ImageBackbone | None = None
        self._lock = threading.Lock()
        self._proposals = ThreadPoolExecutor(analyzer_options.proposal_threads, thread_name_prefix="proposals")
        self._requests = ThreadPoolExecutor(max(1, options.parallel_requests), thread_name_prefix="triton")
        self._closed = False
        self.last_stage_seconds: dict[str, float] = {}  # client-side timings of the last analyze() (bench, logs)

    @classmethod
    def from_settings(
        cls,
        settings: TritonSettings,
        analyzer_options: AnalyzerOptions,
        *,
        connect: bool = True,
        text_encoder: TextEncoder | None = None,
    ) -> TritonAnalyzer:
        """From MOODWATCH_TRITON_* settings. A server that is not up yet is not an error here: the
        worker starts, reports not-ready on /readyz, and retries each batch until the model answers."""
        options = TritonOptions(
            url=settings.triton_url,
            model=settings.triton_model,
            timeout_s=settings.triton_timeout_s,
            connect_timeout_s=settings.triton_connect_timeout_s,
            retry_attempts=settings.triton_retry_attempts,
            max_request_images=settings.triton_max_request_images,
        )
        analyzer = cls(options, analyzer_options, text_encoder)
        if connect:
            try:
                contract = analyzer.connect()
                log.info(
                    "triton analyzer ready",
                    url=options.url,
                    model=options.model,
                    heads=contract.versions.heads,
                    index=contract.versions.index,
                    image_encoder=contract.versions.image_encoder,
                )
            except BackendUnavailable as exc:
                log.warning("triton backend not available yet; batches will wait and retry", error=str(exc))
        return analyzer

    # -- Analyzer interface ------------------------------------------------------------------------

    @property
    def versions(self) -> ModelVersions:
        # selective search: the proposals run here, on the client (the paper path); learned: on the server
        opts = self.analyzer_options
        proposals = "selective_search" if opts.regions_enabled else None
        if opts.proposals == "learned":
            learned = self._contract.region_proposals if self._contract is not None else _UNKNOWN
            proposals = learned if opts.regions_on else None
        if self._contract is not None:
            return self._contract.versions.model_copy(update={"region_proposals": proposals})
        return ModelVersions(
            analyzer=ANALYZER_VERSION,
            backend="triton",
            image_encoder=_UNKNOWN,
            text_encoder=_UNKNOWN,
            heads=_UNKNOWN,
            index=_UNKNOWN,
            region_proposals=proposals,
        )

    def analyze(
        self, images: Sequence[np.ndarray], texts: Sequence[PostText | None] | None = None
    ) -> list[ImageAnalysis]:
        if not images:
            return []
        images = list(images)
        started = time.perf_counter()
        contract = self.connect()
        opts = replace(self.analyzer_options, retrieval_k=contract.retrieval_k)  # what the server's fusion reads
        uses = text_uses(texts, len(images), opts.text_languages, readable=self.text_encoder is not None)
        want_regions = opts.regions_on
        if contract.learned:
            return self._analyze_learned(contract, images, uses, opts, want_regions, started)
        pending = (
            [self._proposals.submit(region_candidates, img, opts.region) for img in images] if want_regions else []
        )
        try:
            pixels = self._resize(contract, images)
        except (TypeError, ValueError) as exc:
            for fut in pending:
                fut.cancel()
            raise AnalysisFailed(f"cannot preprocess image: {exc}") from exc
        resized = time.perf_counter()
        candidates: list[RegionCandidates | None] = (
            [fut.result() for fut in pending] if want_regions else [None] * len(images)
        )
        candidates = [_cap(c, contract.max_regions) for c in candidates]
        proposed = time.perf_counter()

        n = len(images)
        boxes = np.zeros((n, contract.max_regions, 4), dtype=np.float32)
        counts = np.zeros((n, 1), dtype=np.int32)
        sizes = np.zeros((n, 2), dtype=np.int32)
        for i, (image, cand) in enumerate(zip(images, candidates)):
            sizes[i] = (image.shape[1], image.shape[0])
            if cand is not None and len(cand.boxes):
                boxes[i, : len(cand.boxes)] = cand.boxes
                counts[i, 0] = len(cand.boxes)
        post_text, post_mask = text_stage(self.text_encoder, [u.text if u else None for u in uses], contract.text_dim)
        arrays = {
            "PIXELS": pixels,
            "BOXES": boxes,
            "BOX_COUNT": counts,
            "IMAGE_SIZE": sizes,
            "POST_TEXT": post_text.numpy(),
            "POST_TEXT_MASK": post_mask.numpy().reshape(n, 1),
        }
        outputs = self._infer_batch(contract, arrays)
        answered = time.perf_counter()

        global_outputs = _global_outputs(outputs)
        results = []
        for i, image in enumerate(images):
            height, width = image.shape[:2]
            count = int(counts[i, 0])
            dists = torch.from_numpy(np.array(outputs["REGION_DISTS"][i, :count], dtype=np.float32)) if count else None
            evidence = _evidence(outputs, i)
            results.append(
                compose_analysis(global_outputs, i, dists, candidates[i], evidence, width, height, opts, uses[i])
            )
        self.last_stage_seconds = {
            "resize": resized - started,  # proposals run meanwhile in the pool
            "proposals_wait": proposed - resized,
            "triton_request": answered - proposed,
            "compose": time.perf_counter() - answered,
        }
        return results

    def _analyze_learned(
        self,
        contract: ModelContract,
        images: list[np.ndarray],
        uses: list[TextUse | None],
        opts: AnalyzerOptions,
        want_regions: bool,
        started: float,
    ) -> list[ImageAnalysis]:
        """moodwatch_learned: one request with no boxes; the top-K regions come back with the global outputs."""
        try:
            pixels = self._resize(contract, images)
        except (TypeError, ValueError) as exc:
            raise AnalysisFailed(f"cannot preprocess image: {exc}") from exc
        resized = time.perf_counter()
        sizes = np.array([(image.shape[1], image.shape[0]) for image in images], dtype=np.int32)
        post_text, post_mask = text_stage(self.text_encoder, [u.text if u else None for u in uses], contract.text_dim)
        arrays = {
            "PIXELS": pixels,
            "IMAGE_SIZE": sizes,
            "POST_TEXT": post_text.numpy(),
            "POST_TEXT_MASK": post_mask.numpy().reshape(len(images), 1),
        }
        outputs = self._infer_batch(contract, arrays)
        answered = time.perf_counter()

        global_outputs = _global_outputs(outputs)
        top = TopRegions(
            *(torch.from_numpy(np.array(outputs[name], dtype=np.float32)) for name in REGION_OUTPUTS),
            mask=torch.from_numpy(np.array(outputs["REGION_MASK"], dtype=bool)),
        )
        results = []
        for i, (width, height) in enumerate(sizes.tolist()):
            candidates, dists = top_regions_as_candidates(top, i, width, height) if want_regions else (None, None)
            results.append(
                compose_analysis(
                    global_outputs, i, dists, candidates, _evidence(outputs, i), width, height, opts, uses[i]
                )
            )
        self.last_stage_seconds = {
            "resize": resized - started,
            "triton_request": answered - resized,
            "compose": time.perf_counter() - answered,
        }
        return results

    def ready(self) -> bool:
        """Server live, the model ready and its contract one this worker can use (for /readyz: a model
        whose region proposals differ from MOODWATCH_REGION_PROPOSALS would refuse every batch); never raises."""
        timeout = self.options.connect_timeout_s
        try:
            live = bool(
                self._client.is_server_live(client_timeout=timeout)
                and self._client.is_model_ready(self.options.model, client_timeout=timeout)
            )
            return live and self.connect() is not None
        except Exception:  # noqa: BLE001 - readiness is a yes/no question
            return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._proposals.shutdown(wait=False, cancel_futures=True)
        self._requests.shutdown(wait=False, cancel_futures=True)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001
            pass

    # -- connection and contract -------------------------------------------------------------------

    def connect(self) -> ModelContract:
        """Check the server and the model, read the model's contract (cached until an error says
        it changed). Raises BackendUnavailable saying what is missing."""
        contract = self._contract
        if contract is not None:
            return contract
        with self._lock:
            if self._contract is not None:
                return self._contract
            url, model, timeout = self.options.url, self.options.model, self.options.connect_timeout_s
            try:
                live = self._client.is_server_live(client_timeout=timeout)
            except Exception as exc:
                raise BackendUnavailable(
                    f"Triton server at {url} is not reachable ({_short(exc)}); is tritonserver running there? "
                    f"(MOODWATCH_TRITON_URL)"
                ) from exc
            if not live:
                raise BackendUnavailable(f"Triton server at {url} answers but is not live (shutting down?)")
            try:
                model_ready = self._client.is_model_ready(model, client_timeout=timeout)
            except Exception as exc:
                raise BackendUnavailable(
                    f"Triton server at {url}: readiness of model {model!r} unknown ({_short(exc)})"
                ) from exc
            if not model_ready:
                raise BackendUnavailable(self._model_missing_message())
            try:
                config = self._client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
            except Exception as exc:
                raise BackendUnavailable(
                    f"Triton server at {url}: cannot read the config of {model!r} ({_short(exc)})"
                ) from exc
            contract = parse_contract(config, model, url)
            self._check_proposals(contract)
            self._contract = contract
            self._resizer = None
            return self._contract

    def _check_proposals(self, contract: ModelContract) -> None:
        """The served model proposes regions the way the settings ask (either model serves an analysis without
        regions)."""
        opts = self.analyzer_options
        if not opts.regions_on:
            return
        where = f"model {contract.model!r} on Triton at {self.options.url}"
        if opts.proposals == "learned" and not contract.learned:
            raise BackendUnavailable(
                f"MOODWATCH_REGION_PROPOSALS=learned, but {where} takes boxes proposed by the worker (selective "
                f"search); set MOODWATCH_TRITON_MODEL=moodwatch_learned (export it with `moodwatch triton export "
                f"--model moodwatch_learned`) or MOODWATCH_REGION_PROPOSALS=selective_search"
            )
        if opts.proposals != "learned" and contract.learned:
            raise BackendUnavailable(
                f"MOODWATCH_REGION_PROPOSALS={opts.proposals}, but {where} proposes the regions itself "
                f"({contract.region_proposals}); set MOODWATCH_REGION_PROPOSALS=learned, or MOODWATCH_TRITON_MODEL "
                f"to a model that takes boxes (the `moodwatch` ensemble)"
            )
        if contract.learned and opts.regions_top_k > contract.top_k:
            raise BackendUnavailable(
                f"MOODWATCH_REGIONS_TOP_K={opts.regions_top_k}, but {where} returns the top {contract.top_k} regions; "
                f"re-export it with MOODWATCH_REGIONS_TOP_K={opts.regions_top_k} (MOODWATCH_TRITON_MODEL={contract.model})"
            )

    def _model_missing_message(self) -> str:
        url, model = self.options.url, self.options.model
        try:
            index = self._client.get_model_repository_index(as_json=True, client_timeout=self.options.connect_timeout_s)
            entries = index.get("models", [])
        except Exception as exc:  # noqa: BLE001
            return f"model {model!r} is not ready on Triton at {url} (repository index unavailable: {_short(exc)})"
        mine = [e for e in entries if e.get("name") == model]
        if not mine:
            names = ", ".join(sorted({e.get("name", "?") for e in entries})) or "none"
            return (
                f"no model named {model!r} in the repository of Triton at {url} (it has: {names}); export one with "
                f"`moodwatch triton export --repo DIR` and serve it, or set MOODWATCH_TRITON_MODEL"
            )
        states = "; ".join(
            f"version {e.get('version', '?')} {e.get('state', '?')}" + (f" ({e['reason']})" if e.get("reason") else "")
            for e in mine
        )
        return f"model {model!r} is not ready on Triton at {url}: {states}"

    def _resize(self, contract: ModelContract, images: list[np.ndarray]) -> np.ndarray:
        if self._resizer is None or self._resizer.input_size != contract.input_size:
            self._resizer = pixel_resizer(contract.input_size, contract.resize_mode)
        with torch.inference_mode():
            return self._resizer.preprocess(images, device="cpu").numpy()

    # -- inference -----------------------------------------------------------------------------------

    def _infer_batch(self, contract: ModelContract, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(arrays["PIXELS"])
        step = max(1, min(self.options.max_request_images or contract.max_batch_size, contract.max_batch_size))
        chunks = [{k: v[i : i + step] for k, v in arrays.items()} for i in range(0, n, step)]
        if len(chunks) == 1:
            parts = [self._infer(contract, chunks[0])]
        else:
            parts = [f.result() for f in [self._requests.submit(self._infer, contract, c) for c in chunks]]
        return {name: np.concatenate([p[name] for p in parts]) for name in contract.outputs}

    def _infer(self, contract: ModelContract, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        grpc = self._grpc
        inputs = []
        for name, dtype in contract.inputs.items():
            tensor = grpc.InferInput(name, list(arrays[name].shape), dtype)
            tensor.set_data_from_numpy(np.ascontiguousarray(arrays[name]))
            inputs.append(tensor)
        outputs = [grpc.InferRequestedOutput(name) for name in contract.outputs]
        attempts = max(1, self.options.retry_attempts)
        delay = self.options.retry_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                result = self._client.infer(
                    contract.model, inputs, outputs=outputs, client_timeout=self.options.timeout_s
                )
                return {name: result.as_numpy(name) for name in contract.outputs}
            except Exception as exc:
                status = _status(exc)
                if status == "UNAVAILABLE" and attempt < attempts:
                    log.info("triton unavailable, retrying", url=self.options.url, attempt=attempt, error=_short(exc))
                    time.sleep(delay)
                    delay *= 2
                    continue
                raise self._translate(exc, status, len(arrays["PIXELS"]), attempt) from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: BaseException, status: str, images: int, attempts: int) -> Exception:
        url, model = self.options.url, self.options.model
        if status in ("NOT_FOUND", "INVALID_ARGUMENT"):
            self._contract = None  # re-read the model (it may be redeployed with another contract)
        if status == "DEADLINE_EXCEEDED":
            return BackendUnavailable(
                f"Triton at {url}: model {model!r} did not answer a request of {images} images within "
                f"{self.options.timeout_s:g}s (MOODWATCH_TRITON_TIMEOUT_S); server overloaded or stuck"
            )
        if status == "UNAVAILABLE":
            return BackendUnavailable(f"Triton server at {url} unavailable after {attempts} attempts: {_short(exc)}")
        if status == "NOT_FOUND":
            return BackendUnavailable(f"{self._model_missing_message()} [{_short(exc)}]")
        if status in _TRANSIENT or not status:
            return BackendUnavailable(
                f"Triton at {url}, model {model!r}: {status or type(exc).__name__}: {_short(exc)}"
            )
        message = _short(exc, 500)
        if status == "INTERNAL" and ("stub" in message.lower() or "not healthy" in message.lower()):
            return BackendUnavailable(f"Triton at {url}, model {model!r}: python backend stub failed: {message}")
        return AnalysisFailed(f"Triton model {model!r} rejected the input ({status}): {message}")


# -- helpers ---------------------------------------------------------------------------------------


def parse_contract(config: dict[str, Any], model: str, url: str) -> ModelContract:
    """The client contract from a model config (as_json): input/output names, dims, parameters."""
    inputs = {i["name"]: i for i in config.get("input", [])}
    outputs = {o["name"]: o for o in config.get("output", [])}
    learned = "REGION_BOXES" in outputs and "BOXES" not in inputs
    wanted_inputs, wanted_outputs = (LEARNED_INPUTS, LEARNED_OUTPUTS) if learned else (INPUTS, OUTPUTS)
    missing = [n for n in wanted_inputs if n not in inputs] + [n for n in wanted_outputs if n not in outputs]
    if missing:
        raise BackendUnavailable(
            f"model {model!r} on Triton at {url} is not a moodwatch model (missing {', '.join(missing)}); "
            f"set MOODWATCH_TRITON_MODEL to the exported `moodwatch` ensemble (or `moodwatch_learned`)"
        )
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    pixel_dims = [int(d) for d in inputs["PIXELS"]["dims"]]
    box_dims = [int(d) for d in (outputs["REGION_BOXES"] if learned else inputs["BOXES"])["dims"]]
    if len(pixel_dims) != 3 or pixel_dims[0] != 3 or min(pixel_dims) < 1 or len(box_dims) != 2 or box_dims[1] != 4:
        boxes = "REGION_BOXES" if learned else "BOXES"
        raise BackendUnavailable(
            f"model {model!r} on Triton at {url}: unexpected PIXELS {pixel_dims} / {boxes} {box_dims} dims"
        )
    candidates = int(outputs["RETRIEVAL_SCORES"]["dims"][0])
    k = int(params.get("moodwatch.retrieval_k") or candidates)
    versions = ModelVersions(
        analyzer=params.get("moodwatch.analyzer", ANALYZER_VERSION),
        backend="triton",
        image_encoder=params.get("moodwatch.image_encoder", _UNKNOWN),
        text_encoder=params.get("moodwatch.text_encoder", _UNKNOWN),
        heads=params.get("moodwatch.heads", _UNKNOWN),
        index=params.get("moodwatch.index", _UNKNOWN),
    )
    return ModelContract(
        model=model,
        input_size=(pixel_dims[1], pixel_dims[2]),
        resize_mode=params.get("moodwatch.resize_mode", "bicubic"),
        max_regions=0 if learned else box_dims[0],
        retrieval_k=k,
        candidates=candidates,
        text_dim=int(inputs["POST_TEXT"]["dims"][0]),
        max_batch_size=max(1, int(config.get("max_batch_size", 1) or 1)),
        versions=versions,
        learned=learned,
        top_k=box_dims[0] if learned else 0,
        region_proposals=params.get("moodwatch.region_proposals", _UNKNOWN) if learned else None,
    )


def _global_outputs(outputs: dict[str, np.ndarray]) -> GlobalOutputs:
    return GlobalOutputs(
        *(torch.from_numpy(np.array(outputs[name], dtype=np.float32)) for name in HEADS_OUTPUTS),
        retrieval_scores=outputs["RETRIEVAL_SCORES"],
        retrieval_ids=np.zeros(outputs["RETRIEVAL_SCORES"].shape, np.int64),  # the sentences come as EVIDENCE
    )


def _evidence(outputs: dict[str, np.ndarray], i: int) -> list[Sentence]:
    return [Sentence.from_json(json.loads(_text(raw))) for raw in outputs["EVIDENCE"][i]]


def _cap(candidates: RegionCandidates | None, limit: int) -> RegionCandidates | None:
    """At most ``limit`` candidates: the best by objectness, in their original order."""
    if candidates is None or len(candidates.boxes) <= limit:
        return candidates
    keep = np.sort(np.argsort(-candidates.objectness, kind="stable")[:limit])
    return RegionCandidates(candidates.boxes[keep], candidates.objectness[keep])


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    text = str(status() if callable(status) else status or "")
    return text.rsplit(".", 1)[-1] if text and text != "None" else ""


def _short(exc: BaseException, limit: int = 300) -> str:
    message = getattr(exc, "message", None)
    text = str(message() if callable(message) else message or exc) or type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _text(raw: Any) -> str:
    return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)
