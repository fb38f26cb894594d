"""Build the Analyzer backend chosen by settings (local torch or Triton); the worker code never changes."""

from __future__ import annotations

import torch

from pipelines.analyze import AnalyzerOptions, LocalAnalyzer
from pipelines.analyzer_api import Analyzer
from pipelines.checkpoints import DEFAULT_HEADS, load_heads
from pipelines.evidence import EvidenceRanking
from pipelines.onnx_backbone import backbone_runner
from pipelines.onnx_learned import learned_runner_for
from pipelines.regions import RegionSettings, load_proposer, proposer_mismatch
from pipelines.retrieval import SentenceDatabase, default_index_dir, ensure_seed_index
from workers.common.logs import get_logger
from workers.common.settings import AnalysisSettings, ModelSettings

log = get_logger("moodwatch.backends")


def analyzer_options(settings: ModelSettings) -> AnalyzerOptions:
    return AnalyzerOptions(
        retrieval_k=settings.retrieval_k,
        regions_enabled=settings.regions_enabled,
        regions_top_k=settings.regions_top_k,
        region=RegionSettings(),
        proposals=settings.region_proposals,
        backbone_chunk=settings.backbone_chunk,
        evidence=EvidenceRanking(candidates=settings.evidence_candidates, weight=settings.evidence_weight),
        text_languages=settings.text_language_list,
    )


def load_database(settings: ModelSettings) -> SentenceDatabase:
    if settings.index_dir is not None:
        return SentenceDatabase.load(settings.index_dir)
    from models.encoders import load_text_encoder

    return ensure_seed_index(default_index_dir(settings.artifacts_dir), load_text_encoder(settings.text_encoder, "cpu"))


def build_local_analyzer(settings: ModelSettings) -> LocalAnalyzer:
    from models.encoders import load_image_backbone, load_text_encoder

    torch.set_num_threads(max(1, torch.get_num_threads()))
    heads_path = settings.heads_path if settings.heads_path.exists() else DEFAULT_HEADS
    heads, card = load_heads(heads_path, device=settings.device)
    backbone = load_image_backbone(settings.image_encoder, settings.device)
    database = load_database(settings)
    text_encoder = load_text_encoder(settings.text_encoder, settings.device) if heads.config.post_text else None
    options = analyzer_options(settings)
    runner, runtime = backbone_runner(backbone, settings.backbone_runtime, settings.artifacts_dir / "onnx")
    proposer = load_proposer(device=settings.device) if options.learned_regions else None
    program, program_runtime = None, runtime
    if proposer is not None and runtime == "onnxruntime" and proposer_mismatch(proposer, backbone) is None:
        cache = settings.artifacts_dir / "onnx"
        program, why = learned_runner_for(backbone, heads, proposer, database, options, cache)
        if program is None:
            log.info("learned path stays in torch", reason=why)
            program_runtime = "torch"
    analyzer = LocalAnalyzer(
        backbone,
        heads,
        database,
        options,
        proposer=proposer,
        text_encoder=text_encoder,
        backbone_runner=runner,
        learned_runner=program,
    )
    log.info(
        "local analyzer ready",
        backbone_runtime=runtime,
        learned_path=program_runtime if proposer is not None else None,
        heads=analyzer.versions.heads,
        index=analyzer.versions.index,
        sentences=len(database),
        image_encoder=backbone.name,
    )
    return analyzer


def build_analyzer(settings: AnalysisSettings) -> Analyzer:
    if settings.backend == "triton":
        from models.encoders import load_text_encoder
        from workers.adapters.triton_client import TritonAnalyzer

        text_encoder = load_text_encoder(settings.text_encoder, "cpu")  # the posts' words are encoded in the worker
        return TritonAnalyzer.from_settings(settings, analyzer_options(settings), text_encoder=text_encoder)
    return build_local_analyzer(settings)
