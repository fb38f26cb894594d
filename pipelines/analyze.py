"""The in-process Analyzer: a batch of RGB images -> ImageAnalysis per image.

Per batch: one backbone pass (feature maps + pooled vectors) -> aligned embedding -> FAISS top-k
sentences (their text features are precomputed in the index) -> MIRA polarity and the EW-MTCNN
emotion distribution, all batched; per image: region proposals (thread pool, OpenCV releases the
GIL) -> RoI features from the same feature map -> region scores -> AR top-K -> sum fusion.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from models.emotions import polarity_from_emotions
from models.encoders import ImageBackbone
from models.moodnet import POLARITY_CLASSES, MoodHeads, calibrate_emotions
from models.regions import ar_score, fuse_sum, senti_score, top_k_regions
from pipelines.checkpoints import heads_version
from pipelines.regions import RegionCandidates, RegionSettings, candidate_features, region_candidates
from pipelines.retrieval import SentenceDatabase
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


@dataclass
class GlobalOutputs:
    """Batched outputs of the global (whole-image) stages; also what the Triton backend returns."""

    polarity: torch.Tensor  # [B, 2] positive, negative
    emotions: torch.Tensor  # [B, 8] wheel order
    retrieval_scores: np.ndarray  # [B, k]
    retrieval_ids: np.ndarray  # [B, k]


class LocalAnalyzer:
    """In-process torch backend of the Analyzer interface (pipelines.analyzer_api.Analyzer)."""

    def __init__(
        self,
        backbone: ImageBackbone,
        heads: MoodHeads,
        database: SentenceDatabase,
        options: AnalyzerOptions = AnalyzerOptions(),
    ) -> None:
        self.backbone = backbone.eval()
        self.heads = heads.eval()
        self.database = database
        self.options = options
        self.versions = ModelVersions(
            analyzer=ANALYZER_VERSION,
            backend="local",
            image_encoder=backbone.name,
            text_encoder=str(database.manifest().get("text_encoder", "unknown")),
            heads=heads_version(heads),
            index=database.version,
        )
        self._pool = ThreadPoolExecutor(options.proposal_threads, thread_name_prefix="proposals")

    # -- Analyzer interface ------------------------------------------------------------------------

    def analyze(self, images: Sequence[np.ndarray]) -> list[ImageAnalysis]:
        if not images:
            return []
        candidates = (
            list(self._pool.map(lambda img: region_candidates(img, self.options.region), images))
            if self.options.regions_enabled and self.options.regions_top_k > 0
            else [None] * len(images)
        )
        with torch.inference_mode():
            pixels = self.backbone.preprocess(list(images))
            feat_map, pooled = self.backbone(pixels)
            outputs = self.global_outputs(feat_map, pooled)
            results = []
            for i, image in enumerate(images):
                height, width = image.shape[:2]
                regions, region_dists = self._regions(feat_map[i : i + 1], candidates[i], width, height)
                polarity = fuse_sum(
                    outputs.polarity[i], polarity_from_emotions(region_dists), beta=self.options.region_beta
                )
                results.append(self._result(i, outputs, polarity, regions, width, height))
        return results

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- stages ------------------------------------------------------------------------------------

    def global_outputs(self, feat_map: torch.Tensor, pooled: torch.Tensor) -> GlobalOutputs:
        query = self.heads.embed(pooled)
        retrieval = self.database.retrieve(query.cpu().numpy(), k=self.options.retrieval_k)
        text_feats = torch.as_tensor(retrieval.features, dtype=feat_map.dtype, device=feat_map.device)
        polarity, _ = self.heads.polarity(text_feats, feat_map)
        emotions = self.heads.emotions(pooled)
        return GlobalOutputs(polarity, emotions, retrieval.scores, retrieval.ids)

    def _regions(
        self, feat_map: torch.Tensor, candidates: RegionCandidates | None, width: int, height: int
    ) -> tuple[list[Region], torch.Tensor]:
        empty = feat_map.new_zeros((0, len(MIKELS_EMOTIONS)))
        if candidates is None or len(candidates.boxes) == 0:
            return [], empty
        feats = candidate_features(self.backbone, feat_map, candidates, width, height)
        dists = self.heads.score_regions(feats)  # [R, 8]
        senti = senti_score(dists)
        objectness = torch.as_tensor(candidates.objectness, dtype=dists.dtype)
        scores = ar_score(objectness, senti, alpha=self.options.region_alpha)
        top = top_k_regions(scores, k=self.options.regions_top_k)
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
                    x0=x0, y0=y0, x1=x1, y1=y1,
                    score=_unit(scores[j]), objectness=_unit(objectness[j]), senti=_unit(senti[j]),
                    dominant_emotion=MIKELS_EMOTIONS[int(dists[j].argmax())],
                    polarity="positive" if pos >= neg else "negative",
                )
            )
        return regions, dists[torch.as_tensor(top, dtype=torch.long)]

    def _result(
        self, i: int, outputs: GlobalOutputs, polarity: torch.Tensor, regions: list[Region], width: int, height: int
    ) -> ImageAnalysis:
        emotions = calibrate_emotions(outputs.emotions[i], polarity)
        pos, neg = (float(v) for v in polarity / polarity.sum())
        dist = EmotionDistribution.from_sequence([_unit(v) for v in emotions / emotions.sum()])
        ids, scores = outputs.retrieval_ids[i], outputs.retrieval_scores[i]
        evidence = [
            Evidence(text=s.text, emotion=s.emotion, similarity=float(sc), source=s.source)
            for s, sc in zip(self.database.sentences_for(ids[None])[0], scores)
        ]
        return ImageAnalysis(
            polarity=POLARITY_CLASSES[0] if pos >= neg else POLARITY_CLASSES[1],
            polarity_probs=PolarityProbs(positive=_unit(pos), negative=_unit(neg)),
            emotions=dist,
            dominant_emotion=dist.dominant(),
            regions=regions,
            evidence=evidence,
            image_width=width,
            image_height=height,
        )


def _unit(value) -> float:
    return float(min(1.0, max(0.0, float(value))))
