"""The in-process Analyzer: a batch of RGB images -> ImageAnalysis per image.

Per batch: one backbone pass (feature maps + pooled vectors) -> aligned embedding -> FAISS top-k
sentences (their text features are precomputed in the index) -> MIRA polarity and the EW-MTCNN
emotion distribution, all batched; per image: region proposals (thread pool, OpenCV releases the
GIL) -> RoI features from the same feature map -> region scores -> AR top-K -> sum fusion.

The stages are module functions (``retrieval_stage``, ``heads_stage``, ``region_distributions``)
and the step from stage outputs to an ``ImageAnalysis`` is ``compose_analysis``, so that every
backend -- ``LocalAnalyzer`` here, the Triton models in triton_repo/ and the Triton client in
workers/adapters/triton_client.py -- computes the same numbers with the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.emotions import polarity_from_emotions
from models.encoders import ImageBackbone
from models.moodnet import POLARITY_CLASSES, MoodHeads, calibrate_emotions
from models.regions import ar_score, fuse_sum, senti_score, top_k_regions
from pipelines.checkpoints import heads_version
from pipelines.regions import (
    ProposalMethod,
    RegionCandidates,
    RegionSettings,
    candidate_features,
    learned_top_regions,
    load_proposer,
    proposer_version,
    region_candidates,
    top_regions_as_candidates,
)
from pipelines.retrieval import Retrieval, Sentence, SentenceDatabase
from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import EmotionDistribution, Evidence, ImageAnalysis, ModelVersions, PolarityProbs, Region

ANALYZER_VERSION = "moodwatch-analyzer/1"


@dataclass(frozen=True)
class AnalyzerOptions:
    retrieval_k: int = 3
    regions_enabled: bool = True
    regions_top_k: int = 8
    region_alpha: float = 0.6
    region_beta: float = 0.3
    region: RegionSettings = field(default_factory=RegionSettings)
    proposal_threads: int = max(1, min(4, os.cpu_count() or 1))
    # selective_search: the paper's path (per image, OpenCV, CPU); learned: from the feature map, batched with the
    # backbone (the worker's default through MOODWATCH_REGION_PROPOSALS; needs the EfficientNet-Lite0 feature map)
    proposals: ProposalMethod = "selective_search"
    backbone_chunk: int = 0  # run the backbone over chunks of this many images (0 = whole batch); see README


@dataclass
class GlobalOutputs:
    """Batched outputs of the global (whole-image) stages; also what the Triton backend returns."""

    polarity: torch.Tensor  # [B, 2] positive, negative
    emotions: torch.Tensor  # [B, 8] wheel order
    retrieval_scores: np.ndarray  # [B, k]
    retrieval_ids: np.ndarray  # [B, k]


# -- stages (shared by LocalAnalyzer and the Triton python-backend models) ---------------------------


def retrieval_stage(heads: MoodHeads, database: SentenceDatabase, pooled: torch.Tensor, k: int) -> Retrieval:
    """Pooled backbone features [B, C] -> aligned embedding -> FAISS top-k (scores, ids, stored text features)."""
    query = heads.embed(pooled)
    return database.retrieve(query.cpu().numpy(), k=k)


def heads_stage(
    heads: MoodHeads, feat_map: torch.Tensor, pooled: torch.Tensor, text_feats: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """MIRA polarity [B, 2] (text features attend over the feature map) and the emotion distribution [B, 8]."""
    polarity, _ = heads.polarity(text_feats, feat_map)
    emotions = heads.emotions(pooled)
    return polarity, emotions


def region_distributions(
    heads: MoodHeads,
    geometry: Any,
    feat_map: torch.Tensor,
    candidates: RegionCandidates | None,
    width: int,
    height: int,
) -> torch.Tensor:
    """Emotion distribution [R, 8] of every region candidate of one image (feature map [1, C, h, w]).

    ``geometry`` maps original-image boxes onto the feature map (an ``ImageBackbone``, or anything
    with its ``to_feature_coords``).
    """
    if candidates is None or len(candidates.boxes) == 0:
        return feat_map.new_zeros((0, len(MIKELS_EMOTIONS)))
    feats = candidate_features(geometry, feat_map, candidates, width, height)
    return heads.score_regions(feats)  # [R, 8]


# -- composition: stage outputs -> ImageAnalysis (shared by every backend) -----------------------------


def select_regions(
    dists: torch.Tensor, candidates: RegionCandidates | None, width: int, height: int, options: AnalyzerOptions
) -> tuple[list[Region], torch.Tensor]:
    """Senti + AR scores of the candidates, the top-K as ``Region``s, and the top-K distributions."""
    empty = dists.new_zeros((0, len(MIKELS_EMOTIONS)))
    if candidates is None or len(candidates.boxes) == 0 or dists.shape[0] == 0:
        return [], empty
    senti = senti_score(dists)
    objectness = torch.as_tensor(candidates.objectness, dtype=dists.dtype, device=dists.device)
    scores = ar_score(objectness, senti, alpha=options.region_alpha)
    top = top_k_regions(scores, k=options.regions_top_k)
    regions = []
    for j in (int(t) for t in top):
        x0, y0, x1, y1 = candidates.boxes[j]
        x0, y0 = int(np.floor(max(0.0, x0))), int(np.floor(max(0.0, y0)))
        x1, y1 = int(np.ceil(min(width, x1))), int(np.ceil(min(height, y1)))
        if x1 <= x0 or y1 <= y0:
            continue
        pos, neg = polarity_from_emotions(dists[j]).tolist()
        regions.append(
            Region(
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                score=_unit(scores[j]),
                objectness=_unit(objectness[j]),
                senti=_unit(senti[j]),
                dominant_emotion=MIKELS_EMOTIONS[int(dists[j].argmax())],
                polarity="positive" if pos >= neg else "negative",
            )
        )
    return regions, dists[torch.as_tensor(top, dtype=torch.long)]


def compose_analysis(
    polarity: torch.Tensor,
    emotions: torch.Tensor,
    region_dists: torch.Tensor | None,
    candidates: RegionCandidates | None,
    evidence: Sequence[Sentence],
    evidence_scores: Sequence[float] | np.ndarray,
    width: int,
    height: int,
    options: AnalyzerOptions,
) -> ImageAnalysis:
    """One image's stage outputs -> ImageAnalysis.

    ``polarity`` [2] global MIRA probabilities, ``emotions`` [8], ``region_dists`` [R, 8] for the
    R candidates (None or empty: no regions), ``evidence`` the k retrieved sentences with their
    cosine ``evidence_scores``; width/height of the original image.
    """
    if region_dists is None:
        region_dists = polarity.new_zeros((0, len(MIKELS_EMOTIONS)))
    regions, top_dists = select_regions(region_dists, candidates, width, height, options)
    fused = fuse_sum(polarity, polarity_from_emotions(top_dists), beta=options.region_beta)
    calibrated = calibrate_emotions(emotions, fused)
    pos, neg = (float(v) for v in fused / fused.sum())
    dist = EmotionDistribution.from_sequence([_unit(v) for v in calibrated / calibrated.sum()])
    return ImageAnalysis(
        polarity=POLARITY_CLASSES[0] if pos >= neg else POLARITY_CLASSES[1],
        polarity_probs=PolarityProbs(positive=_unit(pos), negative=_unit(neg)),
        emotions=dist,
        dominant_emotion=dist.dominant(),
        regions=regions,
        evidence=[
            Evidence(text=s.text, emotion=s.emotion, similarity=float(sc), source=s.source)
            for s, sc in zip(evidence, evidence_scores)
        ],
        image_width=width,
        image_height=height,
    )


def analyzer_versions(
    backend: str, image_encoder: str, heads: MoodHeads, database: SentenceDatabase, region_proposals: str | None = None
) -> ModelVersions:
    """The versions recorded with every result (the same strings for every backend)."""
    return ModelVersions(
        analyzer=ANALYZER_VERSION,
        backend=backend,  # type: ignore[arg-type]
        image_encoder=image_encoder,
        text_encoder=_encoder_name(database.manifest().get("text_encoder")),
        heads=heads_version(heads),
        index=database.version,
        region_proposals=region_proposals,
    )


class LocalAnalyzer:
    """In-process torch backend of the Analyzer interface (pipelines.analyzer_api.Analyzer)."""

    def __init__(
        self,
        backbone: ImageBackbone,
        heads: MoodHeads,
        database: SentenceDatabase,
        options: AnalyzerOptions = AnalyzerOptions(),
        proposer: torch.nn.Module | None = None,
    ) -> None:
        self.backbone = backbone.eval()
        self.heads = heads.eval()
        self.database = database
        self.options = options
        regions_on = options.regions_enabled and options.regions_top_k > 0
        self.learned = regions_on and options.proposals == "learned"
        if self.learned and proposer is None:
            proposer = load_proposer(device=backbone.device)
        self.proposer = proposer.eval() if self.learned else None
        if self.learned and self.proposer.config["in_dim"] != backbone.feature_dim:
            raise ValueError(
                f"learned proposals need a {self.proposer.config['in_dim']}-channel feature map; {backbone.name} "
                f"gives {backbone.feature_dim} (set MOODWATCH_REGION_PROPOSALS=selective_search)"
            )
        method = (proposer_version(self.proposer) if self.learned else "selective_search") if regions_on else None
        self.versions = analyzer_versions("local", backbone.name, heads, database, method)
        self._pool = ThreadPoolExecutor(options.proposal_threads, thread_name_prefix="proposals")

    # -- Analyzer interface ------------------------------------------------------------------------

    def analyze(self, images: Sequence[np.ndarray]) -> list[ImageAnalysis]:
        if not images:
            return []
        if self.learned:
            return self._analyze_learned(images)
        candidates = (
            list(self._pool.map(lambda img: region_candidates(img, self.options.region), images))
            if self.options.regions_enabled and self.options.regions_top_k > 0
            else [None] * len(images)
        )
        with torch.inference_mode():
            feat_map, pooled = self.backbone_pass(images)
            outputs = self.global_outputs(feat_map, pooled)
            evidence = self.database.sentences_for(outputs.retrieval_ids)
            results = []
            for i, image in enumerate(images):
                height, width = image.shape[:2]
                dists = region_distributions(
                    self.heads, self.backbone, feat_map[i : i + 1], candidates[i], width, height
                )
                results.append(
                    compose_analysis(
                        outputs.polarity[i],
                        outputs.emotions[i],
                        dists,
                        candidates[i],
                        evidence[i],
                        outputs.retrieval_scores[i],
                        width,
                        height,
                        self.options,
                    )
                )
        return results

    def _analyze_learned(self, images: Sequence[np.ndarray]) -> list[ImageAnalysis]:
        """One tensor program per micro-batch: backbone -> retrieval + heads -> proposals -> RoI-align -> AR top-K."""
        sizes = torch.tensor([(img.shape[1], img.shape[0]) for img in images], device=self.backbone.device)
        with torch.inference_mode():
            feat_map, pooled = self.backbone_pass(images)
            outputs = self.global_outputs(feat_map, pooled)
            boxes, objectness, mask = self.proposer(feat_map, sizes)
            top = learned_top_regions(
                self.heads, feat_map, boxes, objectness, mask, self.options.regions_top_k, self.options.region_alpha
            )
            evidence = self.database.sentences_for(outputs.retrieval_ids)
            polarity, emotions = outputs.polarity.float().cpu(), outputs.emotions.float().cpu()
            results = []
            for i, (width, height) in enumerate(sizes.tolist()):
                candidates, dists = top_regions_as_candidates(top, i, width, height)
                results.append(
                    compose_analysis(
                        polarity[i],
                        emotions[i],
                        dists,
                        candidates,
                        evidence[i],
                        outputs.retrieval_scores[i],
                        width,
                        height,
                        self.options,
                    )
                )
        return results

    def backbone_pass(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps and pooled vectors of the batch, in chunks of ``options.backbone_chunk`` images."""
        chunk = self.options.backbone_chunk or len(images)
        parts = [
            self.backbone(self.backbone.preprocess(list(images[i : i + chunk]))) for i in range(0, len(images), chunk)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- stages ------------------------------------------------------------------------------------

    def global_outputs(self, feat_map: torch.Tensor, pooled: torch.Tensor) -> GlobalOutputs:
        retrieval = retrieval_stage(self.heads, self.database, pooled, self.options.retrieval_k)
        text_feats = torch.as_tensor(retrieval.features, dtype=feat_map.dtype, device=feat_map.device)
        polarity, emotions = heads_stage(self.heads, feat_map, pooled, text_feats)
        return GlobalOutputs(polarity, emotions, retrieval.scores, retrieval.ids)


def _encoder_name(entry: Any) -> str:
    return str(entry.get("name", "unknown")) if isinstance(entry, dict) else str(entry or "unknown")


def _unit(value) -> float:
    return float(min(1.0, max(0.0, float(value))))
