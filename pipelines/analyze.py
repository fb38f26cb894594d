"""The in-process Analyzer: a batch of posts (RGB image + optional text) -> ImageAnalysis per post.

Per batch: one backbone pass (feature maps + pooled vectors) -> aligned embedding -> FAISS top-M
candidate sentences (their text features are precomputed in the index; the fusion reads the first k)
-> the post texts through the text encoder (pipelines.text decides which are read) -> three-way MIRA
polarity with and without the post's words, the Mikels (EW-MTCNN) and Emotion6 distributions, all
batched; per image: region proposals (thread pool, OpenCV releases the GIL) -> RoI features from the
same feature map -> region scores -> AR top-K -> sum fusion -> evidence ranked (pipelines.evidence).

The stages are module functions (``retrieval_stage``, ``heads_stage``, ``region_distributions``)
and the step from stage outputs to an ``ImageAnalysis`` is ``compose_analysis``, so that every
backend -- ``LocalAnalyzer`` here, the Triton models in triton_repo/ and the Triton client in
workers/adapters/triton_client.py -- computes the same numbers with the same code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from models.emotions import polarity_from_emotions
from models.encoders import ImageBackbone, TextEncoder
from models.moodnet import POLARITY3_CLASSES, MoodHeads, calibrate_emotions, fuse_regions_sum
from models.regions import ar_score, senti_score, top_k_regions
from pipelines.checkpoints import heads_version
from pipelines.evidence import EvidenceRanking, rank_evidence
from pipelines.regions import (
    ProposalMethod,
    RegionCandidates,
    RegionSettings,
    TopRegions,
    candidate_features,
    learned_top_regions,
    load_proposer,
    proposer_mismatch,
    proposer_version,
    region_candidates,
    top_regions_as_candidates,
)
from pipelines.retrieval import Retrieval, Sentence, SentenceDatabase
from pipelines.text import DEFAULT_TEXT_LANGUAGES, PostText, TextUse, decide_text_use
from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import (
    Emotion6Distribution,
    EmotionDistribution,
    Evidence,
    ImageAnalysis,
    ModelVersions,
    PolarityProbs3,
    Region,
    TextInfluence,
)

ANALYZER_VERSION = "moodwatch-analyzer/2"
HEADS_OUTPUTS = ("POLARITY", "POLARITY_NO_TEXT", "EMOTIONS", "EMOTIONS6")  # heads_stage's order
REGION_OUTPUTS = ("REGION_BOXES", "REGION_OBJECTNESS", "REGION_DISTS", "REGION_MASK")  # TopRegions' order


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
    evidence: EvidenceRanking = field(default_factory=EvidenceRanking)
    text_languages: tuple[str, ...] = DEFAULT_TEXT_LANGUAGES  # post text in other languages is not read

    @property
    def regions_on(self) -> bool:
        return self.regions_enabled and self.regions_top_k > 0

    @property
    def learned_regions(self) -> bool:
        """Regions on, proposed by the learned head (the tensor path) rather than selective search."""
        return self.regions_on and self.proposals == "learned"

    @property
    def candidates(self) -> int:
        """Sentences retrieved per image: the evidence candidates, at least the k the fusion reads."""
        return max(self.retrieval_k, self.evidence.candidates)


@dataclass
class GlobalOutputs:
    """Batched outputs of the global (whole-image) stages; also what the Triton backend returns."""

    polarity: torch.Tensor  # [B, 3] positive, neutral, negative (before region fusion)
    polarity_no_text: torch.Tensor  # [B, 3] the same without the post's words
    emotions: torch.Tensor  # [B, 8] Mikels wheel order
    emotions6: torch.Tensor  # [B, 7] EMOTION6_LABELS order
    retrieval_scores: np.ndarray  # [B, M] the candidates, best first; the fusion read the first retrieval_k
    retrieval_ids: np.ndarray  # [B, M]


# -- stages (shared by LocalAnalyzer and the Triton python-backend models) ---------------------------


def retrieval_stage(heads: MoodHeads, database: SentenceDatabase, pooled: torch.Tensor, k: int) -> Retrieval:
    """Pooled backbone features [B, C] -> aligned embedding -> FAISS top-k (scores, ids, stored text features)."""
    query = heads.embed(pooled)
    return database.retrieve(query.cpu().numpy(), k=k)


def text_stage(
    text_encoder: TextEncoder | None, texts: Sequence[str | None], dim: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts the model reads (None: no text) -> features [B, dim] (zeros where none) and mask [B]."""
    mask = torch.tensor([bool(t) for t in texts], dtype=torch.bool)
    features = torch.zeros(len(texts), dim)
    if mask.any():
        if text_encoder is None:
            raise ValueError("post texts given but no text encoder")
        wanted = [t for t in texts if t]
        features[mask] = torch.as_tensor(text_encoder.encode(wanted, batch_size=32), dtype=torch.float32)
    return features.to(device), mask.to(device)


def text_uses(
    texts: Sequence[PostText | None] | None, n: int, languages: tuple[str, ...], readable: bool = True
) -> list[TextUse | None]:
    """What becomes of each post's text (pipelines.text); ``readable`` False: the backend cannot read text."""
    if texts is None:
        return [None] * n
    if len(texts) != n:
        raise ValueError(f"{len(texts)} texts for {n} images")
    uses = [decide_text_use(t, languages) if t is not None else None for t in texts]
    if not readable:  # say so instead of pretending the words were read
        uses = [TextUse(None, "no_text") if u is not None and u.text else u for u in uses]
    return uses


def heads_stage(
    heads: MoodHeads,
    feat_map: torch.Tensor,
    pooled: torch.Tensor,
    text_feats: torch.Tensor,
    post_text: torch.Tensor | None = None,
    post_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three-way MIRA polarity [B, 3] with and without the post's words (the k retrieved sentences' features
    [B, k, D] and the post text [B, D] attend over the feature map), and the Mikels [B, 8] and Emotion6 [B, 7]
    distributions. Posts without text get the same polarity twice."""
    batch = feat_map.shape[0]
    if post_text is None:
        post_text = feat_map.new_zeros(batch, heads.config.text_dim)
        post_mask = torch.zeros(batch, dtype=torch.bool, device=feat_map.device)
    polarity, _ = heads.polarity(text_feats, feat_map, post_text, post_mask)
    polarity_no_text = polarity
    if post_mask.any():
        polarity_no_text, _ = heads.polarity(text_feats, feat_map, post_text, torch.zeros_like(post_mask))
    return polarity, polarity_no_text, heads.emotions(pooled), heads.emotions6(pooled)


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
    outputs: GlobalOutputs,
    i: int,
    region_dists: torch.Tensor | None,
    candidates: RegionCandidates | None,
    evidence: Sequence[Sentence],
    width: int,
    height: int,
    options: AnalyzerOptions,
    text_use: TextUse | None = None,
) -> ImageAnalysis:
    """Image ``i`` of a batch's stage outputs -> ImageAnalysis.

    ``region_dists`` [R, 8] for the R candidates (None or empty: no regions), ``evidence`` the M candidate
    sentences of the image (scores in ``outputs.retrieval_scores[i]``), width/height of the original image,
    ``text_use`` what became of the post's text (None: the post had none).
    """
    polarity, no_text = outputs.polarity[i].float().cpu(), outputs.polarity_no_text[i].float().cpu()
    if region_dists is None:
        region_dists = polarity.new_zeros((0, len(MIKELS_EMOTIONS)))
    regions, top_dists = select_regions(region_dists.float().cpu(), candidates, width, height, options)
    region_polarity = polarity_from_emotions(top_dists)
    fused = _normalised(fuse_regions_sum(polarity, region_polarity, beta=options.region_beta))
    fused_no_text = _normalised(fuse_regions_sum(no_text, region_polarity, beta=options.region_beta))
    probs = PolarityProbs3(**{name: _unit(v) for name, v in zip(POLARITY3_CLASSES, fused.tolist())})
    calibrated = calibrate_emotions(outputs.emotions[i].float().cpu(), fused)
    dist = EmotionDistribution.from_sequence([_unit(v) for v in calibrated / calibrated.sum()])
    emotion6 = outputs.emotions6[i].float().cpu()
    dist6 = Emotion6Distribution.from_sequence([_unit(v) for v in emotion6 / emotion6.sum()])
    return ImageAnalysis(
        polarity=probs.verdict(),
        polarity_probs=probs,
        emotions=dist,
        dominant_emotion=dist.dominant(),
        emotion6=dist6,
        dominant_emotion6=dist6.dominant(),
        text_influence=text_influence(fused, fused_no_text, text_use),
        regions=regions,
        evidence=shown_evidence(evidence, outputs.retrieval_scores[i], calibrated.numpy(), options),
        image_width=width,
        image_height=height,
    )


def text_influence(fused: torch.Tensor, fused_no_text: torch.Tensor, text_use: TextUse | None) -> TextInfluence:
    status = text_use.reason if text_use is not None else "no_text"
    if status != "used":
        return TextInfluence(status=status)  # type: ignore[arg-type]
    without = POLARITY3_CLASSES[int(fused_no_text.argmax())]
    return TextInfluence(
        status="used",
        shift=_unit(0.5 * float((fused - fused_no_text).abs().sum())),
        polarity_without_text=without,  # type: ignore[arg-type]
        changed_verdict=without != POLARITY3_CLASSES[int(fused.argmax())],
    )


def shown_evidence(
    sentences: Sequence[Sentence], scores: np.ndarray, emotions: np.ndarray, options: AnalyzerOptions
) -> list[Evidence]:
    """The candidates ranked by similarity and agreement with the post's distribution (pipelines.evidence)."""
    sentences = list(sentences)
    if not sentences:
        return []
    emotion_ids = np.array([MIKELS_EMOTIONS.index(s.emotion) for s in sentences])
    order = rank_evidence(np.asarray(scores)[: len(sentences)], emotion_ids, emotions, options.evidence)
    return [
        Evidence(
            text=sentences[j].text,
            emotion=sentences[j].emotion,
            similarity=float(scores[j]),
            source=sentences[j].source,
            in_fusion=bool(j < options.retrieval_k),
            support=_unit(emotions[emotion_ids[j]]),
        )
        for j in (int(o) for o in order)
    ]


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
        text_encoder: TextEncoder | None = None,
        backbone_runner: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        learned_runner: Callable[..., dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self.backbone = backbone.eval()
        # pixels -> (feature map, pooled): the torch module itself, or its ONNX Runtime export
        # (pipelines.onnx_backbone; chosen by MOODWATCH_BACKBONE_RUNTIME in the worker)
        self.backbone_runner = backbone_runner or backbone
        self.heads = heads.eval()
        self.database = database
        self.options = options
        self.text_encoder = text_encoder.eval() if text_encoder is not None else None
        self.learned = options.learned_regions
        if self.learned and proposer is None:
            proposer = load_proposer(device=backbone.device)
        self.proposer = proposer.eval() if self.learned else None
        mismatch = proposer_mismatch(self.proposer, backbone) if self.learned else None
        if mismatch:
            raise ValueError(f"{mismatch} (set MOODWATCH_REGION_PROPOSALS=selective_search)")
        # the whole learned path as one graph (pipelines.onnx_learned), when the worker built one for this analyzer
        self.learned_runner = learned_runner if self.learned else None
        method = (
            (proposer_version(self.proposer) if self.learned else "selective_search") if options.regions_on else None
        )
        self.versions = analyzer_versions("local", backbone.name, heads, database, method)
        self._pool = ThreadPoolExecutor(options.proposal_threads, thread_name_prefix="proposals")

    # -- Analyzer interface ------------------------------------------------------------------------

    def analyze(
        self, images: Sequence[np.ndarray], texts: Sequence[PostText | None] | None = None
    ) -> list[ImageAnalysis]:
        """One ImageAnalysis per image; ``texts[i]`` is post i's text and language (None: image only)."""
        if not images:
            return []
        uses = self.text_uses(texts, len(images))
        if self.learned:
            return self._analyze_learned(images, uses)
        candidates = (
            list(self._pool.map(lambda img: region_candidates(img, self.options.region), images))
            if self.options.regions_on
            else [None] * len(images)
        )
        with torch.inference_mode():
            feat_map, pooled = self.backbone_pass(images)
            outputs = self.global_outputs(feat_map, pooled, uses)
            evidence = self.database.sentences_for(outputs.retrieval_ids)
            results = []
            for i, image in enumerate(images):
                height, width = image.shape[:2]
                dists = region_distributions(
                    self.heads, self.backbone, feat_map[i : i + 1], candidates[i], width, height
                )
                results.append(
                    compose_analysis(
                        outputs, i, dists, candidates[i], evidence[i], width, height, self.options, uses[i]
                    )
                )
        return results

    def _analyze_learned(self, images: Sequence[np.ndarray], uses: list[TextUse | None]) -> list[ImageAnalysis]:
        """One tensor program per micro-batch: backbone -> retrieval + heads -> proposals -> RoI-align -> AR top-K."""
        sizes = torch.tensor([(img.shape[1], img.shape[0]) for img in images], device=self.backbone.device)
        with torch.inference_mode():
            if self.learned_runner is not None:
                outputs, top = self._run_program(images, uses, sizes)
            else:
                feat_map, pooled = self.backbone_pass(images)
                outputs = self.global_outputs(feat_map, pooled, uses)
                boxes, objectness, mask = self.proposer(feat_map, sizes)
                top = learned_top_regions(
                    self.heads, feat_map, boxes, objectness, mask, self.options.regions_top_k, self.options.region_alpha
                )
        evidence = self.database.sentences_for(outputs.retrieval_ids)
        results = []
        for i, (width, height) in enumerate(sizes.tolist()):
            candidates, dists = top_regions_as_candidates(top, i, width, height)
            results.append(
                compose_analysis(outputs, i, dists, candidates, evidence[i], width, height, self.options, uses[i])
            )
        return results

    def _run_program(
        self, images: Sequence[np.ndarray], uses: list[TextUse | None], sizes: torch.Tensor
    ) -> tuple[GlobalOutputs, TopRegions]:
        """The learned path as one call of ``learned_runner`` (the whole micro-batch, no backbone chunks)."""
        texts = [u.text if u is not None else None for u in uses]
        post_text, post_mask = text_stage(self.text_encoder, texts, self.heads.config.text_dim)
        out = self.learned_runner(self.backbone.preprocess(list(images)), sizes, post_text, post_mask)
        ids = out["RETRIEVAL_IDS"].numpy()
        outputs = GlobalOutputs(*(out[n] for n in HEADS_OUTPUTS), out["RETRIEVAL_SCORES"].numpy(), ids)
        return outputs, TopRegions(*(out[n] for n in REGION_OUTPUTS))

    def backbone_pass(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps and pooled vectors of the batch, in chunks of ``options.backbone_chunk`` images."""
        chunk = self.options.backbone_chunk or len(images)
        parts = [
            self.backbone_runner(self.backbone.preprocess(list(images[i : i + chunk])))
            for i in range(0, len(images), chunk)
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def ready(self) -> bool:
        return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- stages ------------------------------------------------------------------------------------

    def text_uses(self, texts: Sequence[PostText | None] | None, n: int) -> list[TextUse | None]:
        readable = self.text_encoder is not None and self.heads.config.post_text
        return text_uses(texts, n, self.options.text_languages, readable)

    def global_outputs(
        self, feat_map: torch.Tensor, pooled: torch.Tensor, uses: Sequence[TextUse | None] | None = None
    ) -> GlobalOutputs:
        retrieval = retrieval_stage(self.heads, self.database, pooled, self.options.candidates)
        k = self.options.retrieval_k
        text_feats = torch.as_tensor(retrieval.features[:, :k], dtype=feat_map.dtype, device=feat_map.device)
        texts = [u.text if u is not None else None for u in (uses or [None] * len(pooled))]
        post_text, post_mask = text_stage(self.text_encoder, texts, self.heads.config.text_dim, feat_map.device)
        polarity, no_text, emotions, emotions6 = heads_stage(
            self.heads, feat_map, pooled, text_feats, post_text.to(feat_map.dtype), post_mask
        )
        return GlobalOutputs(polarity, no_text, emotions, emotions6, retrieval.scores, retrieval.ids)


def _encoder_name(entry: Any) -> str:
    return str(entry.get("name", "unknown")) if isinstance(entry, dict) else str(entry or "unknown")


def _normalised(probs: torch.Tensor) -> torch.Tensor:
    return probs / probs.sum().clamp_min(1e-12)


def _unit(value) -> float:
    return float(min(1.0, max(0.0, float(value))))
