"""The Triton backend against a real tritonserver (nvidia-pytriton wheel, python backend, CPU).

One server per module, on the repository that `moodwatch triton export` writes from tiny random
models built here (tiny CNN backbone "tiny-random:0", MoodHeads 64/32/16, seed sentences encoded by
the tiny BERT, a random learned proposer for that backbone). It runs with --model-control-mode=explicit
so a test can unload a model mid-stream; `moodwatch_learned` is loaded by the tests that use it. Tests
that stop the server or unload a model put it back before they return.

Region proposals are made deterministic here: OpenCV's selective search draws from libc rand()
(measured: two calls on the same image give the same boxes in a different order, even after
cv2.setRNGSeed), and the box order decides the rank-based objectness. Both backends run the
same `region_candidates` in the client, so the tests memoise it per image to compare the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pytriton", reason="tritonserver comes with nvidia-pytriton: pip install -e '.[local]'")
pytest.importorskip("tritonclient.grpc")

from google.protobuf import text_format
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry
from tritonclient.grpc import model_config_pb2

import pipelines.analyze as analyze_module
import workers.adapters.triton_client as triton_backend_module
from models.encoders import load_image_backbone, tiny_text_encoder
from models.moodnet import HeadsConfig, MoodHeads
from models.proposals import LearnedProposer
from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.analyzer_api import AnalysisFailed, BackendUnavailable
from pipelines.checkpoints import load_heads, save_heads
from pipelines.proposal_distill import save_proposer
from pipelines.regions import load_proposer, proposer_version, region_candidates
from pipelines.retrieval import SentenceDatabase, load_seed_sentences
from pipelines.text import PostText
from workers.adapters.triton_client import TritonAnalyzer, TritonOptions
from workers.analyzer.backends import analyzer_options
from workers.devstack.triton_server import TritonServer, start_local_triton

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = "tiny-random:0"
OPTIONS = AnalyzerOptions(proposal_threads=1)
LEARNED = "moodwatch_learned"
LEARNED_OPTIONS = AnalyzerOptions(proposal_threads=1, proposals="learned")
TOL = 1e-4


def _images() -> list[np.ndarray]:
    from skimage import data

    rng = np.random.default_rng(7)
    return [
        data.astronaut(),  # 512 x 512 RGB
        data.chelsea(),  # 300 x 451
        data.coffee(),  # 400 x 600
        data.camera(),  # 512 x 512 grey (H x W)
        data.rocket(),  # 427 x 640
        rng.integers(0, 256, (20, 30, 3), dtype=np.uint8),  # 600 px: smaller than any region (800 px)
    ]


IMAGES = _images()
TEXTS = ("what a wonderful day at the beach", "ich bin so traurig heute", "worst service ever, never again")


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def deterministic_proposals():
    cache: dict[str, object] = {}
    lock = threading.Lock()

    def memoised(image, cfg):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() + str(image.shape) + repr(cfg)
        with lock:
            if key not in cache:
                cache[key] = region_candidates(image, cfg)
            return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(analyze_module, "region_candidates", memoised)
        mp.setattr(triton_backend_module, "region_candidates", memoised)
        yield


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton-assets")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        heads = MoodHeads(HeadsConfig(image_dim=64, text_dim=32, hidden_dim=16)).eval()
        proposer = LearnedProposer(64, load_image_backbone(BACKBONE).spatial_size, keep=20)
    heads_path = save_heads(heads, root / "heads" / "heads.pt", {"note": "tiny random heads for tests"})
    proposer_path = save_proposer(proposer, root / "proposer" / "proposals.pt", {"note": "tiny random proposer"})
    SentenceDatabase.from_sentences(load_seed_sentences(), tiny_text_encoder(0)).save(root / "index")
    return {"root": root, "heads": heads_path, "index": root / "index", "proposer": proposer_path}


@pytest.fixture(scope="module")
def exported_repo(tiny_assets) -> Path:
    """The repository as `moodwatch triton export` writes it (the real CLI, in its own process)."""
    repo = tiny_assets["root"] / "repo"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.cli",
            "triton",
            "export",
            "--repo",
            str(repo),
            "--heads",
            str(tiny_assets["heads"]),
            "--index",
            str(tiny_assets["index"]),
            "--image-encoder",
            BACKBONE,
            "--model",
            "moodwatch",
            "--model",
            LEARNED,
            "--proposer",
            str(tiny_assets["proposer"]),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads((repo / "export.json").read_text())["models"] == [
        "backbone",
        "retrieval",
        "heads",
        "regions",
        "moodwatch",
        LEARNED,
    ]
    return repo


@pytest.fixture(scope="module")
def triton_server(exported_repo, local_stack, tiny_assets):
    """tritonserver as `moodwatch demo --triton` starts it (start_local_triton: explicit model
    control, the configured model loaded, added to the local stack), on the CLI-exported repository.
    Configured here: the `moodwatch` ensemble with selective search, which most tests below compare
    with the local path; `learned_server` adds the default `moodwatch_learned`."""
    settings = local_stack.settings(
        heads_path=tiny_assets["heads"],
        index_dir=tiny_assets["index"],
        image_encoder=BACKBONE,
        triton_model="moodwatch",
        region_proposals="selective_search",
    )
    settings = start_local_triton(local_stack, settings, repo_dir=exported_repo, export=False)
    server = local_stack.extra[-1]
    assert isinstance(server, TritonServer) and server.running and server.load_models == ["moodwatch"]
    assert settings.backend == "triton" and settings.triton_url == server.grpc_url
    yield server
    server.stop()
    local_stack.extra.remove(server)  # the stack is shared by the session


@pytest.fixture(scope="module")
def local_analyzer(tiny_assets):
    heads, _ = load_heads(tiny_assets["heads"])  # the fp16-stored weights, as the server loads them
    analyzer = LocalAnalyzer(
        load_image_backbone(BACKBONE),
        heads,
        SentenceDatabase.load(tiny_assets["index"]),
        OPTIONS,
        text_encoder=tiny_text_encoder(0),
    )
    yield analyzer
    analyzer.close()


@pytest.fixture
def learned_server(triton_server):
    """The server with `moodwatch_learned` loaded too (loaded on first use; a restart of the server drops it)."""
    client = triton_server.client()
    try:
        if not client.is_model_ready(LEARNED):
            client.load_model(LEARNED)
    finally:
        client.close()
    return triton_server


@pytest.fixture(scope="module")
def local_learned(tiny_assets):
    """LocalAnalyzer's learned path with the exported proposer (fp16-stored weights, as the server loads them)."""
    heads, _ = load_heads(tiny_assets["heads"])
    analyzer = LocalAnalyzer(
        load_image_backbone(BACKBONE),
        heads,
        SentenceDatabase.load(tiny_assets["index"]),
        LEARNED_OPTIONS,
        proposer=load_proposer(tiny_assets["proposer"]),
        text_encoder=tiny_text_encoder(0),
    )
    yield analyzer
    analyzer.close()


@pytest.fixture
def triton_analyzer(triton_server):
    analyzer = TritonAnalyzer(TritonOptions(url=triton_server.grpc_url, timeout_s=60), OPTIONS, tiny_text_encoder(0))
    yield analyzer
    analyzer.close()


def _wait_ready(analyzer: TritonAnalyzer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not analyzer.ready():
        assert time.monotonic() < deadline, "model did not come back"
        time.sleep(0.5)


def _assert_same(local, remote) -> None:
    assert len(local) == len(remote)
    for a, b in zip(local, remote):
        assert (a.image_width, a.image_height) == (b.image_width, b.image_height)
        assert a.polarity == b.polarity
        assert abs(a.polarity_probs.positive - b.polarity_probs.positive) <= TOL
        assert abs(a.polarity_probs.neutral - b.polarity_probs.neutral) <= TOL
        assert abs(a.polarity_probs.negative - b.polarity_probs.negative) <= TOL
        assert np.allclose(a.emotions.as_list(), b.emotions.as_list(), atol=TOL, rtol=0)
        assert np.allclose(a.emotion6.as_list(), b.emotion6.as_list(), atol=TOL, rtol=0)
        assert (a.text_influence.status, a.text_influence.polarity_without_text) == (
            b.text_influence.status,
            b.text_influence.polarity_without_text,
        )
        assert abs(a.text_influence.shift - b.text_influence.shift) <= TOL
        assert [(e.text, e.emotion, e.source, e.in_fusion) for e in a.evidence] == [
            (e.text, e.emotion, e.source, e.in_fusion) for e in b.evidence
        ]
        assert np.allclose([e.similarity for e in a.evidence], [e.similarity for e in b.evidence], atol=TOL, rtol=0)
        assert [(r.x0, r.y0, r.x1, r.y1, r.dominant_emotion, r.polarity) for r in a.regions] == [
            (r.x0, r.y0, r.x1, r.y1, r.dominant_emotion, r.polarity) for r in b.regions
        ]
        assert np.allclose([r.score for r in a.regions], [r.score for r in b.regions], atol=TOL, rtol=0)


# -- the repository -----------------------------------------------------------------------------------


def test_export_renders_cpu_and_gpu_configs_from_the_same_templates(tiny_assets, tmp_path):
    from pipelines.export import ALL_MODELS, export_repository

    cpu, gpu = (
        export_repository(
            tiny_assets["heads"],
            tiny_assets["index"],
            tmp_path / kind,
            kind,
            image_encoder=BACKBONE,
            models=ALL_MODELS,
            proposer_path=tiny_assets["proposer"],
        )
        for kind in ("cpu", "gpu")
    )
    assert (
        cpu.models
        == gpu.models
        == ["backbone", "retrieval", "heads", "regions", "moodwatch", "moodwatch_fused", LEARNED]
    )
    for name in cpu.models:
        c = text_format.Parse((tmp_path / "cpu" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        g = text_format.Parse((tmp_path / "gpu" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert c.name == g.name == name
        assert c.input and c.output and c.max_batch_size == 32 and g.max_batch_size == 64
        assert c.version_policy.latest.num_versions == 1
        assert [(i.name, list(i.dims)) for i in c.input] == [(i.name, list(i.dims)) for i in g.input]
        if name == "moodwatch":  # Triton refuses batching/instances/warmup on an ensemble: set on the steps
            assert c.platform == "ensemble" and [s.model_name for s in c.ensemble_scheduling.step] == [
                "backbone",
                "retrieval",
                "heads",
                "regions",
            ]
            assert c.parameters["moodwatch.heads"].string_value == cpu.versions["heads"]
            continue
        assert c.backend == "python" and c.dynamic_batching.max_queue_delay_microseconds > 0
        assert c.model_warmup and c.model_warmup[0].batch_size == 1 and g.model_warmup[0].batch_size == 64
        assert [grp.kind for grp in c.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
        expected = (
            model_config_pb2.ModelInstanceGroup.KIND_CPU
            if name == "retrieval"
            else model_config_pb2.ModelInstanceGroup.KIND_GPU
        )
        assert [grp.kind for grp in g.instance_group] == [expected]  # FAISS stays on the CPU
        assert (tmp_path / "cpu" / name / "1" / "model.py").is_file()
        assert (tmp_path / "cpu" / name / "1" / "moodwatch_serving.py").is_file()
    assert (tmp_path / "cpu" / "regions" / "warmup" / "boxes").stat().st_size == 50 * 4 * 4
    assert (tmp_path / "cpu" / "retrieval" / "1" / "index" / "manifest.json").is_file()
    assert (tmp_path / "cpu" / "backbone" / "1" / "backbone.pt").is_file()
    # the CPU profile runs the backbone through ONNX Runtime inside the python model; the GPU one, torch
    for name in ("backbone", "moodwatch_fused", LEARNED):
        c = text_format.Parse((tmp_path / "cpu" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        g = text_format.Parse((tmp_path / "gpu" / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert c.parameters["backbone_runtime"].string_value == "onnxruntime"
        assert g.parameters["backbone_runtime"].string_value == "torch"
        assert (tmp_path / "cpu" / name / "1" / "backbone.onnx").is_file()
        assert not (tmp_path / "gpu" / name / "1" / "backbone.onnx").exists()
    # moodwatch_learned: no boxes in, the top-K regions out, the proposer's version as a parameter
    learned = text_format.Parse(
        (tmp_path / "gpu" / LEARNED / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    assert [i.name for i in learned.input] == ["PIXELS", "IMAGE_SIZE", "POST_TEXT", "POST_TEXT_MASK"]
    assert {o.name: list(o.dims) for o in learned.output if o.name.startswith("REGION_")} == {
        "REGION_BOXES": [8, 4],
        "REGION_OBJECTNESS": [8],
        "REGION_DISTS": [8, 8],
        "REGION_MASK": [8],
    }
    version = proposer_version(load_proposer(tiny_assets["proposer"]))
    assert learned.parameters["moodwatch.region_proposals"].string_value == version
    assert learned.parameters["moodwatch.heads"].string_value == cpu.versions["heads"]
    assert learned.parameters["regions_top_k"].string_value == "8"
    assert (tmp_path / "gpu" / LEARNED / "1" / "proposals.pt").read_bytes() == tiny_assets["proposer"].read_bytes()
    assert np.frombuffer((tmp_path / "cpu" / LEARNED / "warmup" / "image_size").read_bytes(), np.int32).tolist() == [
        640,
        480,
    ]


def test_export_refuses_a_proposer_for_another_feature_map(tiny_assets, tmp_path):
    from pipelines.export import ExportError, export_repository

    args = (tiny_assets["heads"], tiny_assets["index"], tmp_path / "repo", "cpu")
    with pytest.raises(ExportError, match=r"reads a 1280-channel .* feature map; tiny-random-cnn@0 gives 64 x"):
        export_repository(*args, image_encoder=BACKBONE, models=[LEARNED])  # the shipped EfficientNet proposer
    assert not (tmp_path / "repo").exists()
    export_repository(*args, image_encoder=BACKBONE)  # the proposer is only read for moodwatch_learned


def test_learned_model_on_the_onnxruntime_backend_keeps_the_contract(tiny_assets, tmp_path, triton_server):
    """`--model moodwatch_learned --backbone-backend onnxruntime`: an ensemble of `learned_program` (the whole
    analysis as one ONNX graph for Triton's onnxruntime backend, TensorRT FP16 on GPU) and `learned_evidence`
    (python), with the python model's inputs, outputs and parameters. The local server has no onnxruntime
    backend: the graph is run in ONNX Runtime here against torch, and the evidence step on the server."""
    import onnxruntime as ort
    import tritonclient.grpc as grpcclient
    from google.protobuf import json_format

    from pipelines.export import export_repository
    from pipelines.onnx_learned import LearnedProgram
    from workers.adapters.triton_client import parse_contract

    def config(folder: Path, model: str) -> model_config_pb2.ModelConfig:
        return text_format.Parse((folder / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    def io(c: model_config_pb2.ModelConfig) -> list[tuple]:
        return [(t.name, t.data_type, list(t.dims)) for t in (*c.input, *c.output)]

    args = (tiny_assets["heads"], tiny_assets["index"])
    learned = {"models": [LEARNED], "image_encoder": BACKBONE, "proposer_path": tiny_assets["proposer"]}
    export_repository(*args, tmp_path / "python", "cpu", **learned)
    for kind in ("cpu", "gpu"):
        result = export_repository(*args, tmp_path / kind, kind, backbone_backend="onnxruntime", **learned)
        assert result.models == ["learned_program", "learned_evidence", LEARNED]
    python = config(tmp_path / "python", LEARNED)
    for kind in ("cpu", "gpu"):
        ensemble, program = config(tmp_path / kind, LEARNED), config(tmp_path / kind, "learned_program")
        assert ensemble.platform == "ensemble" and io(ensemble) == io(python)
        per_export = ("moodwatch.exported_at", "moodwatch.export_kind")
        assert {k: v.string_value for k, v in ensemble.parameters.items() if k not in per_export} == {
            k: v.string_value
            for k, v in python.parameters.items()
            if k.startswith("moodwatch.") and k not in per_export
        }
        assert ensemble.parameters["moodwatch.export_kind"].string_value == kind
        assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["learned_program", "learned_evidence"]
        assert program.backend == "onnxruntime" and program.dynamic_batching.max_queue_delay_microseconds > 0
        accelerators = program.optimization.execution_accelerators.gpu_execution_accelerator
        assert [a.name for a in accelerators] == (["tensorrt"] if kind == "gpu" else [])
    contract = parse_contract(
        json_format.MessageToDict(config(tmp_path / "cpu", LEARNED), preserving_proto_field_name=True), LEARNED, "x"
    )
    assert contract.learned and contract.region_proposals == proposer_version(load_proposer(tiny_assets["proposer"]))

    heads, _ = load_heads(tiny_assets["heads"])
    database, backbone = SentenceDatabase.load(tiny_assets["index"]), load_image_backbone(BACKBONE)
    options = LEARNED_OPTIONS
    program = LearnedProgram(
        backbone,
        heads,
        load_proposer(tiny_assets["proposer"]),
        database,
        contract.candidates,
        contract.retrieval_k,
        options.regions_top_k,
        options.region_alpha,
    )
    pixels = torch.rand(3, 3, *backbone.input_size) * 255  # what the client sends: resized, 0..255
    sizes = torch.tensor([[640, 480], [300, 900], [1200, 800]], dtype=torch.int32)
    text = torch.randn(3, contract.text_dim)
    mask = torch.tensor([[False], [True], [False]])
    session = ort.InferenceSession(str(tmp_path / "cpu" / "learned_program" / "1" / "model.onnx"))
    names = [o.name for o in session.get_outputs()]
    got = dict(
        zip(
            names,
            session.run(
                None,
                {
                    "PIXELS": pixels.numpy(),
                    "IMAGE_SIZE": sizes.numpy(),
                    "POST_TEXT": text.numpy(),
                    "POST_TEXT_MASK": mask.numpy(),
                },
            ),
        )
    )
    with torch.inference_mode():
        normalised = (pixels - backbone.pixel_mean) / backbone.pixel_std
        expected = dict(zip(names, program(normalised, sizes.long(), text, mask)))
    for name in names:
        np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-4, err_msg=name)

    target = Path(triton_server.repo) / "learned_evidence"  # the evidence step on the running server
    shutil.copytree(tmp_path / "cpu" / "learned_evidence", target)
    client = triton_server.client()
    try:
        client.load_model("learned_evidence")
        ids = got["RETRIEVAL_IDS"]
        request = grpcclient.InferInput("RETRIEVAL_IDS", list(ids.shape), "INT64")
        request.set_data_from_numpy(ids)
        evidence = client.infer("learned_evidence", [request]).as_numpy("EVIDENCE")
        assert [[json.loads(e)["text"] for e in row] for row in evidence] == [
            [s.text for s in row] for row in database.sentences_for(ids)
        ]
    finally:
        client.unload_model("learned_evidence")
        client.close()
        shutil.rmtree(target, ignore_errors=True)


def test_export_for_the_onnxruntime_backend_keeps_the_backbone_contract(tiny_assets, tmp_path):
    """`--backbone-backend onnxruntime`: the `backbone` model is the ONNX graph (normalisation inside) for
    Triton's onnxruntime backend, TensorRT FP16 on GPU, with the python model's inputs and outputs."""
    import onnxruntime as ort

    from pipelines.export import export_repository

    def config(folder: Path) -> model_config_pb2.ModelConfig:
        return text_format.Parse((folder / "backbone" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())

    args = (tiny_assets["heads"], tiny_assets["index"])
    export_repository(*args, tmp_path / "python", "cpu", image_encoder=BACKBONE)
    for kind in ("cpu", "gpu"):
        export_repository(*args, tmp_path / kind, kind, image_encoder=BACKBONE, backbone_backend="onnxruntime")
    python, cpu, gpu = config(tmp_path / "python"), config(tmp_path / "cpu"), config(tmp_path / "gpu")
    for c in (cpu, gpu):
        assert c.name == "backbone" and c.backend == "onnxruntime"
        assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [
            (i.name, i.data_type, list(i.dims)) for i in python.input
        ]
        assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [
            (o.name, o.data_type, list(o.dims)) for o in python.output
        ]
        assert c.dynamic_batching.max_queue_delay_microseconds > 0
    assert not cpu.optimization.execution_accelerators.gpu_execution_accelerator
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert sorted(p.name for p in (tmp_path / "cpu" / "backbone" / "1").iterdir()) == ["model.onnx"]

    backbone = load_image_backbone(BACKBONE)
    pixels = torch.rand(3, 3, *backbone.input_size) * 255  # what the client sends: resized, 0..255
    session = ort.InferenceSession(str(tmp_path / "cpu" / "backbone" / "1" / "model.onnx"))
    feat_map, pooled = session.run(["FEATURE_MAP", "POOLED"], {"PIXELS": pixels.numpy()})
    with torch.inference_mode():
        expected = backbone((pixels - backbone.pixel_mean) / backbone.pixel_std)
    np.testing.assert_allclose(feat_map, expected[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(pooled, expected[1].numpy(), atol=1e-4)


# -- parity ---------------------------------------------------------------------------------------------


def test_triton_and_local_backends_give_the_same_analysis(local_analyzer, triton_analyzer, triton_server):
    log = Path(triton_server.log_path).read_text(errors="replace")
    assert "moodwatch backbone: loaded" in log and "backbone runtime onnxruntime" in log  # the CPU export's ONNX
    local = local_analyzer.analyze(IMAGES)
    remote = triton_analyzer.analyze(IMAGES)
    _assert_same(local, remote)
    assert any(a.regions for a in local) and not local[-1].regions


def test_posts_with_text_give_the_same_analysis_on_both_backends(local_analyzer, triton_analyzer):
    texts = [PostText(TEXTS[i % len(TEXTS)], "de" if i == 1 else None) if i % 3 else None for i in range(len(IMAGES))]
    local = local_analyzer.analyze(IMAGES, texts)
    _assert_same(local, triton_analyzer.analyze(IMAGES, texts))
    statuses = [a.text_influence.status for a in local]
    assert statuses[0] == "no_text" and statuses[1] == "unsupported_language" and statuses[2] == "used"
    assert any(a.text_influence.shift > 0 for a in local)
    lv, tv = local_analyzer.versions.model_dump(), triton_analyzer.versions.model_dump()
    assert (lv.pop("backend"), tv.pop("backend")) == ("local", "triton")
    assert lv == tv


def test_micro_batches_above_the_request_size_are_split_and_give_the_same_result(local_analyzer, triton_server):
    split = TritonAnalyzer(TritonOptions(url=triton_server.grpc_url, timeout_s=60, max_request_images=2), OPTIONS)
    try:
        _assert_same(local_analyzer.analyze(IMAGES[:5]), split.analyze(IMAGES[:5]))
    finally:
        split.close()


def test_a_bad_request_fails_alone_with_a_per_request_error(triton_server, triton_analyzer):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    def request(count: int):
        arrays = {
            "PIXELS": np.zeros((1, 3, 224, 224), np.float32),
            "BOXES": np.zeros((1, 50, 4), np.float32),
            "BOX_COUNT": np.full((1, 1), count, np.int32),
            "IMAGE_SIZE": np.array([[640, 480]], np.int32),
            "POST_TEXT": np.zeros((1, 32), np.float32),
            "POST_TEXT_MASK": np.zeros((1, 1), bool),
        }
        dtypes = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32", np.dtype(bool): "BOOL"}
        inputs = []
        for name, array in arrays.items():
            tensor = grpcclient.InferInput(name, list(array.shape), dtypes[array.dtype])
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    client = triton_server.client()
    results: dict[str, object] = {}

    def call(tag: str, count: int) -> None:
        try:
            results[tag] = client.infer("moodwatch", request(count)).as_numpy("POLARITY")
        except InferenceServerException as exc:
            results[tag] = exc

    threads = [threading.Thread(target=call, args=(f"good-{i}", 0)) for i in range(3)]
    threads.append(threading.Thread(target=call, args=("bad", 99)))  # more boxes than the model takes
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(results["bad"], InferenceServerException) and "BOX_COUNT 99" in results["bad"].message()
    assert all(isinstance(results[f"good-{i}"], np.ndarray) for i in range(3))
    client.close()
    # The client maps a rejected input to AnalysisFailed (the worker dead-letters only that post).
    exc = triton_analyzer._translate(results["bad"], "INTERNAL", 1, 1)
    assert isinstance(exc, AnalysisFailed)


def test_learned_model_gives_the_local_learned_analysis(local_learned, learned_server):
    """moodwatch_learned: proposals, RoI-align, region scores and the AR top-K on the server, nothing on the client;
    on this CPU export the whole analysis runs as the export's learned.onnx, the local path compared here in torch."""
    log = Path(learned_server.log_path).read_text(errors="replace")
    assert re.search(rf"moodwatch {LEARNED}: loaded .*backbone runtime onnxruntime, learned program onnxruntime", log)
    options = TritonOptions(url=learned_server.grpc_url, model=LEARNED, timeout_s=60)
    remote = TritonAnalyzer(options, LEARNED_OPTIONS, tiny_text_encoder(0))
    split = TritonAnalyzer(replace(options, max_request_images=2), LEARNED_OPTIONS, tiny_text_encoder(0))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(triton_backend_module, "region_candidates", _no_selective_search)
            local = local_learned.analyze(IMAGES)
            _assert_same(local, remote.analyze(IMAGES))
            assert any(a.regions for a in local) and not local[-1].regions  # 20 x 30 px: no box passes the filters
            texts = [PostText(TEXTS[i % len(TEXTS)]) if i % 2 else None for i in range(len(IMAGES))]
            local = local_learned.analyze(IMAGES, texts)
            _assert_same(local, remote.analyze(IMAGES, texts))
            _assert_same(local[:5], split.analyze(IMAGES[:5], texts[:5]))
        assert [a.text_influence.status for a in local[:2]] == ["no_text", "used"]
        assert remote.connect().learned and remote.connect().top_k == 8
        lv, tv = local_learned.versions.model_dump(), remote.versions.model_dump()
        assert (lv.pop("backend"), tv.pop("backend")) == ("local", "triton")
        assert lv == tv and tv["region_proposals"] == proposer_version(local_learned.proposer)
        assert tv["region_proposals"].startswith("learned@")
        status = subprocess.run(
            [sys.executable, "-m", "workers.cli", "triton", "status", "--url", options.url, "--model", LEARNED],
            cwd=ROOT,
            env={**os.environ, "MOODWATCH_REGION_PROPOSALS": "learned"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert json.loads(status.stdout[status.stdout.index("{") :])["region_proposals"] == tv["region_proposals"]
    finally:
        remote.close()
        split.close()


def test_a_client_and_a_model_with_other_region_proposals_are_refused_at_connect(learned_server):
    url = learned_server.grpc_url
    for model, options, asked in ((LEARNED, OPTIONS, "selective_search"), ("moodwatch", LEARNED_OPTIONS, "learned")):
        analyzer = TritonAnalyzer(TritonOptions(url=url, model=model), options)
        try:
            assert not analyzer.ready()  # /readyz: every batch would be refused
            with pytest.raises(
                BackendUnavailable, match=rf"MOODWATCH_REGION_PROPOSALS={asked}, but .*MOODWATCH_TRITON_MODEL"
            ):
                analyzer.connect()
        finally:
            analyzer.close()
    more = TritonAnalyzer(TritonOptions(url=url, model=LEARNED), replace(LEARNED_OPTIONS, regions_top_k=9))
    try:
        with pytest.raises(BackendUnavailable, match=r"MOODWATCH_REGIONS_TOP_K=9, but .* top 8 regions"):
            more.connect()
    finally:
        more.close()
    for model in (LEARNED, "moodwatch"):  # without regions either model serves either client
        for options in (OPTIONS, LEARNED_OPTIONS):
            analyzer = TritonAnalyzer(TritonOptions(url=url, model=model), replace(options, regions_enabled=False))
            try:
                assert analyzer.ready()
                (result,) = analyzer.analyze(IMAGES[:1])
                assert not result.regions and analyzer.versions.region_proposals is None
            finally:
                analyzer.close()


def _no_selective_search(*_args, **_kwargs):
    raise AssertionError("the learned path must not run selective search on the client")


# -- failure paths ----------------------------------------------------------------------------------------


def test_missing_model_is_a_clear_transient_error(triton_server):
    analyzer = TritonAnalyzer(TritonOptions(url=triton_server.grpc_url, model="no-such-model"), OPTIONS)
    try:
        assert not analyzer.ready()
        with pytest.raises(BackendUnavailable, match=r"no model named 'no-such-model' .*moodwatch"):
            analyzer.analyze(IMAGES[:1])
    finally:
        analyzer.close()


def test_request_timeout_is_backend_unavailable_and_the_server_recovers(triton_server, triton_analyzer):
    impatient = TritonAnalyzer(TritonOptions(url=triton_server.grpc_url, timeout_s=0.001), OPTIONS)
    try:
        impatient.connect()
        with pytest.raises(BackendUnavailable, match=r"did not answer .* within 0.001s"):
            impatient.analyze(IMAGES[:4])
    finally:
        impatient.close()
    assert len(triton_analyzer.analyze(IMAGES[:2])) == 2


def test_model_unloaded_mid_stream_then_reloaded(triton_server, triton_analyzer, local_analyzer):
    expected = local_analyzer.analyze(IMAGES[:2])
    _assert_same(expected, triton_analyzer.analyze(IMAGES[:2]))
    client = triton_server.client()
    try:
        client.unload_model("heads")  # a step of the ensemble: Triton takes `moodwatch` down with it
        with pytest.raises(
            BackendUnavailable, match=r"model 'moodwatch' is not ready .*(unloaded|UNAVAILABLE|UNLOADING)"
        ):
            triton_analyzer.analyze(IMAGES[:2])
        assert not triton_analyzer.ready()
    finally:
        client.load_model("heads")  # brings the ensemble back
        client.close()
    _wait_ready(triton_analyzer)
    _assert_same(expected, triton_analyzer.analyze(IMAGES[:2]))


def test_server_down_at_start_the_worker_waits_and_retries_without_committing(
    triton_server, worker_settings_for, tiny_assets
):
    from tests.factories import tiny_png_b64
    from workers.adapters.elastic import make_es_client
    from workers.analyzer.metrics import WorkerMetrics
    from workers.analyzer.wiring import build_worker

    settings = worker_settings_for(
        partitions=1,
        batch_max_posts=16,
        batch_max_wait_ms=300,
        backend="triton",
        triton_url=triton_server.grpc_url,
        triton_timeout_s=30,
        triton_model="moodwatch",
        region_proposals="selective_search",
        heads_path=tiny_assets["heads"],
        index_dir=tiny_assets["index"],
        image_encoder=BACKBONE,
    )
    posts = 6
    thread = None
    triton_server.stop()
    try:
        analyzer = TritonAnalyzer.from_settings(
            settings, analyzer_options(settings)
        )  # starts though the server is down
        assert not analyzer.ready()
        with pytest.raises(BackendUnavailable, match=rf"Triton server at {triton_server.grpc_url} is not reachable"):
            analyzer.analyze(IMAGES[:1])

        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        for i in range(posts):
            value = {
                "schema_version": 1,
                "post_id": f"tp-{i}",
                "author_id": "a1",
                "channel": "c1",
                "created_at": "2026-11-01T12:00:00+00:00",
                "image": {"b64": tiny_png_b64(64, 48, (40 * i, 90, 200))},
            }
            producer.send(settings.posts_topic, key=f"tp-{i}".encode(), value=json.dumps(value).encode())
        producer.flush()
        producer.close()

        metrics = WorkerMetrics.create(CollectorRegistry())
        worker = build_worker(settings, analyzer=analyzer, create_topics=False, metrics=metrics)
        thread = threading.Thread(target=worker.run, kwargs={"idle_exit_s": 6.0}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 90
        while metrics.backend_errors._value.get() < 2:  # the batch is in hand and being retried
            assert time.monotonic() < deadline and thread.is_alive(), "worker did not retry the backend"
            time.sleep(0.2)
        assert _committed(settings) == 0
        assert _stored(settings, make_es_client(settings)) == []
    finally:
        triton_server.start()  # the same address: the waiting worker reconnects
    thread.join(timeout=300)
    assert not thread.is_alive(), "worker did not finish after the server came back"
    es = make_es_client(settings)
    stored = _stored(settings, es)
    assert stored == sorted(f"tp-{i}" for i in range(posts))
    assert _committed(settings) == posts
    doc = es.get(index=settings.es_results_index, id="tp-0")["_source"]
    assert doc["model_versions"]["backend"] == "triton"
    assert doc["model_versions"]["image_encoder"] == "tiny-random-cnn@0"


def _committed(settings) -> int:
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=settings.consumer_group, enable_auto_commit=False
    )
    try:
        return consumer.committed(TopicPartition(settings.posts_topic, 0)) or 0
    finally:
        consumer.close()


def _stored(settings, es) -> list[str]:
    if not es.indices.exists(index=settings.es_results_index):
        return []
    es.indices.refresh(index=settings.es_results_index)
    hits = es.search(index=settings.es_results_index, size=100, _source=["post_id"])["hits"]["hits"]
    return sorted(h["_source"]["post_id"] for h in hits)
