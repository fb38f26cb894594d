"""Emotion-sentence database and its FAISS index: the evidence side of MIRA retrieval.

An image's retrieval embedding (the aligned encoder's output, or CLIP's image embedding) is
matched by cosine similarity (inner product of L2-normalised vectors) against the embeddings of
emotion-labelled sentences; the top-k sentences' *text-encoder features* (stored beside the index,
never re-encoded at inference) feed the fusion head, and their text/emotion/source are shown to
moderators as evidence.

Two arrays per database, deliberately separate concepts:
- ``embeddings`` [N, D]: the retrieval space the index is built on (what queries are compared to);
- ``features``   [N, F]: the text encoder's sentence features the fusion head consumes.
In the offline default both are all-MiniLM-L6-v2 sentence embeddings, so one array is stored and
``embeddings`` refers to it (``embeddings is features``); a CLIP-space index with BERT features
stores both.

Corpora
-------
``seed``        ``pipelines/data/sentences.jsonl``: 240 original sentences (30 per Mikels emotion)
                describing what an image might show, written for this project; ships with it.
``goemotions``  ``<data>/text/goemotions/{train,dev,test}.tsv`` (text, label ids, id) + labels.txt.
``isear``       ``<data>/text/isear.csv`` ('|'-separated; ``Field1`` = emotion, ``SIT`` = text).
COCO / Flickr8k captions carry no emotion label and are *not* put in the database (they train the
aligned encoder).

GoEmotions -> Mikels (27 emotions + neutral). A row is kept only when *every* one of its labels
maps, and all to the same Mikels emotion (so single-label rows, or e.g. anger+annoyance):

==============  ============  ===============================================================
GoEmotions      Mikels        why
==============  ============  ===============================================================
anger           anger         same emotion
annoyance       anger         low-intensity anger; same family on every emotion wheel
disgust         disgust       same emotion
fear            fear          same emotion
nervousness     fear          anxious anticipation of harm, the low-intensity end of fear
sadness         sadness       same emotion
grief           sadness       intense sadness over a loss
disappointment  sadness       sadness at an outcome (Plutchik: surprise + sadness)
excitement      excitement    same emotion
amusement       amusement     same emotion
admiration      awe           the only GoEmotions label near awe ("this is stunning", "gorgeous
                              work"); a weak proxy: awe's visual vocabulary comes from the seed
joy             contentment   GoEmotions annotates excitement separately, so joy rows are the
                              calmer gladness ("glad it worked out") = low-arousal positive
relief          contentment   calm after tension: low-arousal positive
love            dropped       mostly liking statements about things ("I love this song"), not
                              the tender contentment of Mikels' images
gratitude       dropped       mostly "thanks for the tip": politeness, nothing visual
approval        dropped       agreement with an opinion, a stance, not an evoked emotion
caring          dropped       advice and well-wishing ("hope you feel better")
optimism        dropped       hope about the future; no Mikels counterpart
desire          dropped       wanting; no Mikels counterpart
pride           dropped       self-conscious emotion; no Mikels counterpart
embarrassment   dropped       self-conscious emotion (like ISEAR shame)
remorse         dropped       mostly apologies ("sorry, my mistake"): guilt, dropped like ISEAR's
surprise        dropped       valence-free astonishment ("wow, didn't know that"); awe is positive
confusion       dropped       cognitive state
curiosity       dropped       cognitive state (mostly questions)
realization     dropped       cognitive state
disapproval     dropped       disagreement, a stance; not reliably anger
neutral         dropped       no emotion
==============  ============  ===============================================================

ISEAR -> Mikels:

=======  ==========  ===================================================================
ISEAR    Mikels      why
=======  ==========  ===================================================================
anger    anger       same emotion
disgust  disgust     same emotion
fear     fear        same emotion
sadness  sadness     same emotion
joy      excitement  ISEAR asked for episodes felt *strongly*: passing an exam, winning a
                     prize, a reunion at the airport, a birth -- vivid high-arousal positive
                     events, i.e. excitement (GoEmotions' joy, defined against its own
                     excitement label, is the calm kind and goes to contentment instead)
shame    dropped     self-conscious emotion; no Mikels counterpart
guilt    dropped     self-conscious emotion; no Mikels counterpart
=======  ==========  ===================================================================

Cleaning (corpora only; the seed is used as written): ISEAR's line-break marker ``á`` is removed,
its backslash-quotes restored and a ``|`` inside a situation rejoined; whitespace collapsed;
rows with fewer than 3 or more than 80 words are dropped, and ISEAR non-answers ("[ No
response.]", "I do not remember", "As in sadness ..."); duplicates (ignoring case, punctuation and
spacing) are kept once, and a text
that appears with two different Mikels emotions is dropped entirely.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
import structlog

from schemas.emotions import MIKELS_EMOTIONS
from schemas.results import Evidence

log = structlog.get_logger("moodwatch.retrieval")

__all__ = [
    "CORPORA",
    "GOEMOTIONS_TO_MIKELS",
    "INDEX_TYPES",
    "ISEAR_TO_MIKELS",
    "SEED_SENTENCES_PATH",
    "SEED_SOURCE",
    "CorpusNotFoundError",
    "IndexMismatchError",
    "Retrieval",
    "Sentence",
    "SentenceDatabase",
    "build_database",
    "build_faiss_index",
    "cap_per_emotion",
    "check_corpus_files",
    "corpus_files",
    "dedupe_sentences",
    "default_data_dir",
    "default_index_dir",
    "ensure_seed_index",
    "load_corpus",
    "load_goemotions",
    "load_isear",
    "load_seed_sentences",
    "map_goemotions_labels",
    "map_isear_label",
    "open_database",
    "read_manifest",
]

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SEED_SENTENCES_PATH = Path(__file__).resolve().parent / "data" / "sentences.jsonl"
SEED_SOURCE = "moodwatch-seed"
CORPORA = ("seed", "goemotions", "isear")
INDEX_TYPES = ("flat", "hnsw", "ivf")
FORMAT_VERSION = 1
MIN_WORDS, MAX_WORDS = 3, 80
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
IVF_MAX_NPROBE = 32

_EMOTION_INDEX = {e: i for i, e in enumerate(MIKELS_EMOTIONS)}

GOEMOTIONS_TO_MIKELS: dict[str, str | None] = {
    "admiration": "awe",
    "amusement": "amusement",
    "anger": "anger",
    "annoyance": "anger",
    "approval": None,
    "caring": None,
    "confusion": None,
    "curiosity": None,
    "desire": None,
    "disappointment": "sadness",
    "disapproval": None,
    "disgust": "disgust",
    "embarrassment": None,
    "excitement": "excitement",
    "fear": "fear",
    "gratitude": None,
    "grief": "sadness",
    "joy": "contentment",
    "love": None,
    "nervousness": "fear",
    "optimism": None,
    "pride": None,
    "realization": None,
    "relief": "contentment",
    "remorse": None,
    "sadness": "sadness",
    "surprise": None,
    "neutral": None,
}

ISEAR_TO_MIKELS: dict[str, str | None] = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "sadness": "sadness",
    "joy": "excitement",
    "shame": None,
    "guilt": None,
}


class CorpusNotFoundError(FileNotFoundError):
    """A requested corpus has files missing under the data folder."""


class IndexMismatchError(RuntimeError):
    """An index folder does not fit the encoders it is used with, or is damaged."""


@dataclass(frozen=True, slots=True)
class Sentence:
    text: str
    emotion: str
    source: str

    def __post_init__(self) -> None:
        if self.emotion not in _EMOTION_INDEX:
            raise ValueError(f"unknown Mikels emotion {self.emotion!r}")

    def to_json(self) -> dict[str, str]:
        return {"text": self.text, "emotion": self.emotion, "source": self.source}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Sentence:
        return cls(text=str(obj["text"]), emotion=str(obj["emotion"]), source=str(obj.get("source", "")))


# --------------------------------------------------------------------------------------------
# Label mapping and corpus loading
# --------------------------------------------------------------------------------------------


def map_goemotions_labels(labels: Iterable[str]) -> str | None:
    """GoEmotions label names of one row -> one Mikels emotion, or None (row dropped)."""
    mapped = set()
    labels = list(labels)
    if not labels:
        return None
    for label in labels:
        m = GOEMOTIONS_TO_MIKELS.get(label.strip().lower())
        if m is None:
            return None
        mapped.add(m)
    return mapped.pop() if len(mapped) == 1 else None


def map_isear_label(label: str) -> str | None:
    return ISEAR_TO_MIKELS.get(label.strip().lower())


def default_data_dir() -> Path:
    """``$MOODWATCH_DATA_DIR`` if set, else ``<project root>/../shared/data``."""
    env = os.environ.get("MOODWATCH_DATA_DIR")
    return Path(env).expanduser() if env else PROJECT_ROOT.parent / "shared" / "data"


def _text_dir(data_dir: str | Path) -> Path:
    """Accept either the data folder (holding ``text/``) or the ``text`` folder itself."""
    d = Path(data_dir).expanduser()
    return d / "text" if (d / "text").is_dir() else d


def corpus_files(corpus: str, data_dir: str | Path | None = None) -> list[Path]:
    """The files a corpus is read from (the seed: the shipped jsonl)."""
    if corpus == "seed":
        return [SEED_SENTENCES_PATH]
    t = _text_dir(data_dir if data_dir is not None else default_data_dir())
    if corpus == "goemotions":
        g = t / "goemotions"
        return [g / "labels.txt", g / "train.tsv", g / "dev.tsv", g / "test.tsv"]
    if corpus == "isear":
        return [t / "isear.csv"]
    raise ValueError(f"unknown corpus {corpus!r}; choose from {', '.join(CORPORA)}")


def check_corpus_files(corpora: Sequence[str], data_dir: str | Path | None = None) -> None:
    """Raise ``CorpusNotFoundError`` naming every missing file (before any model is loaded)."""
    missing = [(c, p) for c in corpora for p in corpus_files(c, data_dir) if not p.is_file()]
    if missing:
        lines = "\n".join(f"  {c}: {p}" for c, p in missing)
        raise CorpusNotFoundError(
            f"corpus files missing under data dir {Path(data_dir) if data_dir else default_data_dir()}:\n{lines}\n"
            "Pass --data-dir pointing at the shared data folder (the one holding text/goemotions and "
            "text/isear.csv), or set MOODWATCH_DATA_DIR."
        )


_WS = re.compile(r"\s+")
_NON_ANSWER = re.compile(
    r"no response|no answer|not applicable|(does not|doesn't) apply"
    r"|(do not|don't|dont|can ?not|can't|cannot|could not|couldn't) (remember|recall)"
    r"|^(same as|as for|see)\b.{0,20}$|^(nothing|none|blank|never|n/?a)\W*$"
    r"|^(same as|as in|as for|see|cf\.?)\s+(in\s+)?(the\s+)?(anger|disgust|fear|sadness|joy|shame|guilt|above|previous)\b",
    re.IGNORECASE,
)


def _normalise_ws(text: str) -> str:
    return _WS.sub(" ", text).strip()


def _word_count_ok(text: str) -> bool:
    n = len(text.split())
    return MIN_WORDS <= n <= MAX_WORDS


def load_seed_sentences(path: str | Path | None = None) -> list[Sentence]:
    p = Path(path) if path is not None else SEED_SENTENCES_PATH
    out = []
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(Sentence.from_json(json.loads(line)))
            except (ValueError, KeyError) as exc:
                raise ValueError(f"{p}:{lineno}: bad sentence record: {exc}") from exc
    return out


def load_goemotions(
    data_dir: str | Path | None = None, splits: Sequence[str] = ("train", "dev", "test")
) -> list[Sentence]:
    g = _text_dir(data_dir if data_dir is not None else default_data_dir()) / "goemotions"
    names = [ln.strip() for ln in (g / "labels.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    out = []
    for split in splits:
        with (g / f"{split}.tsv").open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                try:
                    labels = [names[int(x)] for x in (row.get("label") or "").split(",") if x.strip()]
                except (ValueError, IndexError):
                    continue
                emotion = map_goemotions_labels(labels)
                if emotion is None:
                    continue
                text = _normalise_ws(row.get("text") or "")
                if _word_count_ok(text):
                    out.append(Sentence(text, emotion, "goemotions"))
    return out


def _clean_isear(text: str) -> str:
    # The export marks line breaks with "á", writes an opening quote as a backslash and a closing
    # one as backslash + quote, and leaves the field's own closing quote at the end:
    #   ... speaking \the same language\"- meaning ... encounter."
    text = text.replace("á", " ").replace('\\"', '"').replace("\\", '"')
    if text.count('"') % 2 and text.rstrip().endswith('"'):
        text = text.rstrip()[:-1]
    text = text.replace('""', '"')
    if text.count('"') % 2:
        text = text.replace('"', "")
    text = _normalise_ws(text)
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    return text


def load_isear(data_dir: str | Path | None = None) -> list[Sentence]:
    path = _text_dir(data_dir if data_dir is not None else default_data_dir()) / "isear.csv"
    out = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter="|", quoting=csv.QUOTE_NONE)
        header = next(reader)
        i_emo, i_sit = header.index("Field1"), header.index("SIT")
        tail = len(header) - 1 - i_sit  # fields after SIT (STATE and the trailing empty one)
        for row in reader:
            if len(row) <= i_sit:
                continue
            emotion = map_isear_label(row[i_emo])
            if emotion is None:
                continue
            # A '|' inside the situation text splits it over extra fields: rejoin them.
            text = _clean_isear(" ".join(row[i_sit : len(row) - tail]))
            if not text or _NON_ANSWER.search(text) or not _word_count_ok(text):
                continue
            out.append(Sentence(text, emotion, "isear"))
    return out


def load_corpus(name: str, data_dir: str | Path | None = None) -> list[Sentence]:
    if name == "seed":
        return load_seed_sentences()
    if name == "goemotions":
        return load_goemotions(data_dir)
    if name == "isear":
        return load_isear(data_dir)
    raise ValueError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")


_PUNCT = re.compile(r"[^\w\s]+")


def _dedupe_key(text: str) -> str:
    return _normalise_ws(_PUNCT.sub(" ", text.casefold()))


def dedupe_sentences(sentences: Iterable[Sentence]) -> list[Sentence]:
    """Keep the first copy of each text (ignoring case, punctuation and spacing: "What a good
    pupper" == "what a good pupper!"); drop texts labelled with two different emotions."""
    first: dict[str, Sentence] = {}
    conflicted: set[str] = set()
    for s in sentences:
        key = _dedupe_key(s.text)
        prev = first.get(key)
        if prev is None:
            first[key] = s
        elif prev.emotion != s.emotion:
            conflicted.add(key)
    return [s for k, s in first.items() if k not in conflicted]


def cap_per_emotion(sentences: Sequence[Sentence], max_per_emotion: int | None, seed: int = 0) -> list[Sentence]:
    """At most ``max_per_emotion`` sentences per emotion: seed sentences first, the rest sampled
    reproducibly; the original order is kept."""
    if max_per_emotion is None:
        return list(sentences)
    if max_per_emotion < 1:
        raise ValueError("max_per_emotion must be >= 1")
    rng = random.Random(seed)
    keep: set[int] = set()
    by_emotion: dict[str, list[int]] = {}
    for i, s in enumerate(sentences):
        by_emotion.setdefault(s.emotion, []).append(i)
    for idxs in by_emotion.values():
        seeded = [i for i in idxs if sentences[i].source == SEED_SOURCE]
        others = [i for i in idxs if sentences[i].source != SEED_SOURCE]
        rng.shuffle(others)
        keep.update((seeded + others)[:max_per_emotion])
    return [s for i, s in enumerate(sentences) if i in keep]


# --------------------------------------------------------------------------------------------
# FAISS index
# --------------------------------------------------------------------------------------------


def _ivf_params(n: int) -> tuple[int, int]:
    nlist = max(1, min(int(round(4 * math.sqrt(max(n, 1)))), n // 39))
    return nlist, min(nlist, IVF_MAX_NPROBE)


def build_faiss_index(embeddings: np.ndarray, index_type: str = "flat") -> tuple[faiss.Index, dict[str, Any]]:
    """A CPU inner-product index over L2-normalised ``embeddings`` [N, D] and its parameters."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    if index_type == "flat":
        index = faiss.IndexFlatIP(d)
        params: dict[str, Any] = {}
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    elif index_type == "ivf":
        nlist, nprobe = _ivf_params(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        if n:
            index.train(x)
        index.nprobe = nprobe  # (faiss' python wrapper keeps a reference to the quantizer)
        params = {"nlist": nlist, "nprobe": nprobe}
    else:
        raise ValueError(f"unknown index type {index_type!r}; choose from {', '.join(INDEX_TYPES)}")
    if n:
        index.add(x)
    return index, params


def _apply_search_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
    if index_type == "hnsw" and "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])
    elif index_type == "ivf" and "nprobe" in params:
        faiss.downcast_index(index).nprobe = int(params["nprobe"])


def _faiss_has_gpu() -> bool:
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001
        return False


def _normalise_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


# --------------------------------------------------------------------------------------------
# The database
# --------------------------------------------------------------------------------------------


class _Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray: ...


@dataclass(frozen=True)
class Retrieval:
    """Top-k results for a batch of B queries."""

    scores: np.ndarray  # [B, k] cosine similarity
    ids: np.ndarray  # [B, k] row ids into the database
    features: np.ndarray  # [B, k, F] text-encoder features of the retrieved sentences
    emotion_ids: np.ndarray  # [B, k] index into MIKELS_EMOTIONS
    sentences: list[list[Sentence]]

    def evidence(self) -> list[list[Evidence]]:
        return [
            [
                Evidence(text=s.text, emotion=s.emotion, similarity=float(sc), source=s.source)
                for s, sc in zip(row, scores)
            ]
            for row, scores in zip(self.sentences, self.scores)
        ]


def _sentences_blob(sentences: Sequence[Sentence]) -> bytes:
    return "".join(json.dumps(s.to_json(), ensure_ascii=False, sort_keys=True) + "\n" for s in sentences).encode(
        "utf-8"
    )


def source_hash(sentences: Sequence[Sentence], text_encoder: str, embedding_encoder: str, index_type: str) -> str:
    """Hash of what an index is built *from* (not of float results): decides cache reuse."""
    h = hashlib.sha256()
    h.update(f"v{FORMAT_VERSION}|{text_encoder}|{embedding_encoder}|{index_type}|".encode())
    h.update(_sentences_blob(sentences))
    return h.hexdigest()


class SentenceDatabase:
    """Sentences + text features [N, F] + retrieval embeddings [N, D] + a FAISS inner-product index.

    ``embeddings`` defaults to ``features`` (the same array: one retrieval/feature space).
    Embeddings are L2-normalised on the way in, so scores are cosine similarities.
    """

    def __init__(
        self,
        sentences: Sequence[Sentence],
        features: np.ndarray,
        embeddings: np.ndarray | None = None,
        *,
        text_encoder: str,
        embedding_encoder: str | None = None,
        index_type: str = "flat",
        index: faiss.Index | None = None,
        index_params: dict[str, Any] | None = None,
        created_at: str | None = None,
        device: str | None = None,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {index_type!r}; choose from {', '.join(INDEX_TYPES)}")
        self.sentences: list[Sentence] = list(sentences)
        n = len(self.sentences)
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if feats.ndim != 2 or feats.shape[0] != n:
            raise ValueError(f"features must be [N={n}, F], got {feats.shape}")
        shared = embeddings is None or embeddings is features
        if shared:
            norms = np.linalg.norm(feats, axis=1) if n else np.ones(0)
            if n and not np.allclose(norms, 1.0, atol=1e-3):
                raise ValueError("features are used as retrieval embeddings and must be L2-normalised")
            emb = feats
        else:
            emb = np.ascontiguousarray(embeddings, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != n:
                raise ValueError(f"embeddings must be [N={n}, D], got {emb.shape}")
            if n and not np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3):
                emb = np.ascontiguousarray(_normalise_rows(emb), dtype=np.float32)
        self.features: np.ndarray = feats
        self.embeddings: np.ndarray = emb
        self.text_encoder = text_encoder
        self.embedding_encoder = embedding_encoder or text_encoder
        self.index_type = index_type
        self.emotion_ids: np.ndarray = np.array([_EMOTION_INDEX[s.emotion] for s in self.sentences], dtype=np.int64)
        if index is None:
            index, index_params = build_faiss_index(self.embeddings, index_type)
        elif index.ntotal != n or index.d != self.embeddings.shape[1]:
            raise IndexMismatchError(
                f"index holds {index.ntotal} x {index.d}, database has {n} x {self.embeddings.shape[1]}"
            )
        self.index_params: dict[str, Any] = dict(index_params or {})
        _apply_search_params(index, index_type, self.index_params)
        self.cpu_index: faiss.Index = index
        self.search_index: faiss.Index = index
        self._gpu_resources: Any = None
        self.on_gpu = False
        self.created_at = created_at or datetime.now(UTC).isoformat(timespec="seconds")
        self._version: str | None = None
        if device is not None:
            self.to(device)

    # -- basic properties ----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def shared_embeddings(self) -> bool:
        return self.embeddings is self.features

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def embedding_dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def version(self) -> str:
        """Content hash (sentences, encoders, index type, arrays): the index version string."""
        if self._version is None:
            h = hashlib.sha256()
            h.update(source_hash(self.sentences, self.text_encoder, self.embedding_encoder, self.index_type).encode())
            h.update(self.features.tobytes())
            if not self.shared_embeddings:
                h.update(self.embeddings.tobytes())
            self._version = "idx-" + h.hexdigest()[:12]
        return self._version

    def emotion_counts(self) -> dict[str, int]:
        c = Counter(s.emotion for s in self.sentences)
        return {e: c.get(e, 0) for e in MIKELS_EMOTIONS}

    def source_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.source for s in self.sentences).items()))

    # -- device -------------------------------------------------------------------------------
    def to(self, device: str | None) -> SentenceDatabase:
        """Search on a GPU when asked for ``cuda[:n]`` and faiss has GPU support; else stay on CPU
        (logged, not an error)."""
        dev = str(device or "cpu")
        if not dev.startswith("cuda"):
            self.search_index, self.on_gpu = self.cpu_index, False
            return self
        if not _faiss_has_gpu():
            log.info("faiss has no GPU support or sees no GPU; retrieval index stays on CPU", device=dev)
            return self
        try:
            gpu_no = int(dev.split(":", 1)[1]) if ":" in dev else 0
            self._gpu_resources = faiss.StandardGpuResources()
            self.search_index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu_no, self.cpu_index)
            if self.index_type == "ivf" and "nprobe" in self.index_params:
                faiss.GpuParameterSpace().set_index_parameter(
                    self.search_index, "nprobe", int(self.index_params["nprobe"])
                )
            self.on_gpu = True
        except Exception as exc:  # noqa: BLE001 - e.g. HNSW has no GPU implementation
            log.info(
                "retrieval index could not move to the GPU, staying on CPU",
                index_type=self.index_type,
                device=dev,
                error=str(exc),
            )
            self.search_index, self.on_gpu = self.cpu_index, False
        return self

    # -- search -------------------------------------------------------------------------------
    def search(self, query_emb: Any, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """``query_emb`` [B, D] (numpy or torch; normalised here) -> (scores [B, k], ids [B, k]).

        ``k`` is capped at the database size. An approximate index that returns fewer than k hits
        for a row (id -1) has that row answered exactly instead.
        """
        q = (
            query_emb.detach().float().cpu().numpy()
            if hasattr(query_emb, "detach")
            else np.asarray(query_emb, dtype=np.float32)
        )
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.embedding_dim:
            raise ValueError(f"query dim {q.shape[1]} != index dim {self.embedding_dim} ({self.embedding_encoder})")
        n = len(self)
        if n == 0:
            raise ValueError("the sentence database is empty")
        k = max(1, min(int(k), n))
        q = np.ascontiguousarray(_normalise_rows(q.astype(np.float32, copy=False)), dtype=np.float32)
        scores, ids = self.search_index.search(q, k)
        bad = (ids < 0).any(axis=1)
        if bad.any():
            exact = q[bad] @ self.embeddings.T
            top = np.argsort(-exact, axis=1)[:, :k]
            ids[bad] = top
            scores[bad] = np.take_along_axis(exact, top, axis=1)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def sentences_for(self, ids: np.ndarray) -> list[list[Sentence]]:
        return [[self.sentences[int(i)] for i in row] for row in np.atleast_2d(ids)]

    def features_for(self, ids: np.ndarray) -> np.ndarray:
        """[B, k] ids -> [B, k, F] stored text-encoder features (no re-encoding)."""
        return self.features[np.atleast_2d(ids)]

    def emotions_for(self, ids: np.ndarray) -> np.ndarray:
        return self.emotion_ids[np.atleast_2d(ids)]

    def evidence(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Evidence]]:
        return Retrieval(
            scores, ids, self.features_for(ids), self.emotions_for(ids), self.sentences_for(ids)
        ).evidence()

    def retrieve(self, query_emb: Any, k: int = 3) -> Retrieval:
        scores, ids = self.search(query_emb, k)
        return Retrieval(scores, ids, self.features_for(ids), self.emotions_for(ids), self.sentences_for(ids))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_sentences(
        cls,
        sentences: Sequence[Sentence],
        text_encoder: _Encoder,
        *,
        embedding_encoder: _Encoder | None = None,
        index_type: str = "flat",
        batch_size: int = 64,
        progress: bool = False,
        device: str | None = None,
    ) -> SentenceDatabase:
        texts = [s.text for s in sentences]
        features = _encode(text_encoder, texts, batch_size, progress, "text features")
        if embedding_encoder is None or embedding_encoder is text_encoder:
            embeddings, emb_name = None, text_encoder.name
        else:
            embeddings = _encode(embedding_encoder, texts, batch_size, progress, "retrieval embeddings")
            emb_name = embedding_encoder.name
        t0 = time.perf_counter()
        db = cls(
            sentences,
            features,
            embeddings,
            text_encoder=text_encoder.name,
            embedding_encoder=emb_name,
            index_type=index_type,
            device=device,
        )
        log.info(
            "built retrieval index",
            index_type=index_type,
            sentences=len(db),
            seconds=round(time.perf_counter() - t0, 2),
        )
        return db

    # -- persistence --------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        files = {
            "index": "index.faiss",
            "sentences": "sentences.jsonl",
            "features": "features.npy",
            "embeddings": "features.npy" if self.shared_embeddings else "embeddings.npy",
        }
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "source_hash": source_hash(self.sentences, self.text_encoder, self.embedding_encoder, self.index_type),
            "created_at": self.created_at,
            "count": len(self),
            "text_encoder": {"name": self.text_encoder, "dim": self.feature_dim},
            "embedding_encoder": {
                "name": self.embedding_encoder,
                "dim": self.embedding_dim,
                "shared_with_features": self.shared_embeddings,
            },
            "index": {"type": self.index_type, "metric": "inner_product", "params": self.index_params},
            "emotions": self.emotion_counts(),
            "sources": self.source_counts(),
            "files": files,
        }

    def save(self, directory: str | Path) -> Path:
        """Write index.faiss, sentences.jsonl, features.npy, [embeddings.npy], manifest.json (last)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        manifest_path = d / "manifest.json"
        if manifest_path.exists():
            manifest_path.unlink()  # a folder without a manifest is never taken as a valid index
        faiss.write_index(self.cpu_index, str(d / "index.faiss"))
        (d / "sentences.jsonl").write_bytes(_sentences_blob(self.sentences))
        np.save(d / "features.npy", self.features)
        emb_path = d / "embeddings.npy"
        if self.shared_embeddings:
            if emb_path.exists():
                emb_path.unlink()
        else:
            np.save(emb_path, self.embeddings)
        tmp = d / f".manifest.{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps(self.manifest(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, manifest_path)
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> SentenceDatabase:
        d = Path(directory)
        m = read_manifest(d)
        files = m.get("files", {})
        try:
            sentences = [
                Sentence.from_json(json.loads(ln))
                for ln in (d / files.get("sentences", "sentences.jsonl")).read_text(encoding="utf-8").splitlines()
                if ln.strip()
            ]
            features = np.load(d / files.get("features", "features.npy"))
            shared = m["embedding_encoder"].get("shared_with_features", False)
            embeddings = features if shared else np.load(d / files.get("embeddings", "embeddings.npy"))
            index = faiss.read_index(str(d / files.get("index", "index.faiss")))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise IndexMismatchError(f"index folder {d} is incomplete or damaged: {exc}") from exc
        if len(sentences) != m["count"] or features.shape != (m["count"], m["text_encoder"]["dim"]):
            raise IndexMismatchError(
                f"index folder {d}: manifest says {m['count']} x {m['text_encoder']['dim']}, files hold {len(sentences)} sentences, features {features.shape}"
            )
        db = cls(
            sentences,
            features,
            embeddings,
            text_encoder=m["text_encoder"]["name"],
            embedding_encoder=m["embedding_encoder"]["name"],
            index_type=m["index"]["type"],
            index=index,
            index_params=m["index"].get("params", {}),
            created_at=m.get("created_at"),
        )
        if db.version != m.get("version"):
            raise IndexMismatchError(
                f"index folder {d}: content hash {db.version} != manifest version {m.get('version')}"
            )
        return db.to(device) if device is not None else db


def read_manifest(directory: str | Path) -> dict[str, Any]:
    p = Path(directory) / "manifest.json"
    if not p.is_file():
        raise IndexMismatchError(
            f"no retrieval index at {Path(directory)} (manifest.json missing); build one with `moodwatch index build`"
        )
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise IndexMismatchError(f"{p}: not valid JSON: {exc}") from exc
    if m.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(
            f"{p}: format_version {m.get('format_version')} != {FORMAT_VERSION}; rebuild the index"
        )
    return m


def _encode(encoder: _Encoder, texts: Sequence[str], batch_size: int, progress: bool, what: str) -> np.ndarray:
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    chunk = max(batch_size, 512)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(texts), desc=f"encoding {what} ({encoder.name})", unit="sent")
    # Chunks of similar length (globally sorted) keep padding low; rows go back to input order.
    order = np.argsort([-len(t) for t in texts], kind="stable")
    try:
        for start in range(0, len(texts), chunk):
            idx = order[start : start + chunk]
            out[idx] = np.asarray(encoder.encode([texts[i] for i in idx], batch_size=batch_size), dtype=np.float32)
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------------------------
# Builders and defaults
# --------------------------------------------------------------------------------------------


def build_database(
    corpora: Sequence[str],
    data_dir: str | Path | None,
    text_encoder: _Encoder,
    out_dir: str | Path | None,
    index_type: str = "flat",
    max_per_emotion: int | None = None,
    progress: bool = True,
    *,
    embedding_encoder: _Encoder | None = None,
    batch_size: int = 64,
    seed: int = 0,
    device: str | None = None,
) -> SentenceDatabase:
    """Load the corpora (checked first), dedupe, cap per emotion, encode, index, and save to
    ``out_dir`` when given."""
    corpora = list(dict.fromkeys(corpora))
    if not corpora:
        raise ValueError("no corpus given")
    for c in corpora:
        if c not in CORPORA:
            raise ValueError(f"unknown corpus {c!r}; choose from {', '.join(CORPORA)}")
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose from {', '.join(INDEX_TYPES)}")
    check_corpus_files(corpora, data_dir)
    # The seed goes first so that dedupe and the cap keep the hand-written sentences.
    ordered = sorted(corpora, key=lambda c: c != "seed")
    sentences: list[Sentence] = []
    for c in ordered:
        loaded = load_corpus(c, data_dir)
        log.info("corpus loaded", corpus=c, mapped_sentences=len(loaded))
        sentences.extend(loaded)
    sentences = dedupe_sentences(sentences)
    sentences = cap_per_emotion(sentences, max_per_emotion, seed=seed)
    if not sentences:
        raise ValueError(f"no sentences from corpora {corpora}")
    db = SentenceDatabase.from_sentences(
        sentences,
        text_encoder,
        embedding_encoder=embedding_encoder,
        index_type=index_type,
        batch_size=batch_size,
        progress=progress,
        device=device,
    )
    if out_dir is not None:
        db.save(out_dir)
    return db


def default_index_dir(artifacts_dir: str | Path | None = None) -> Path:
    """Where the shipped-seed index is cached: ``<artifacts>/index/seed``."""
    base = Path(artifacts_dir) if artifacts_dir is not None else PROJECT_ROOT / "artifacts"
    return base / "index" / "seed"


def ensure_seed_index(
    cache_dir: str | Path,
    text_encoder: _Encoder,
    *,
    index_type: str = "flat",
    device: str | None = None,
    progress: bool = False,
) -> SentenceDatabase:
    """The seed-sentence index, built into ``cache_dir`` on first use and reused while its manifest
    matches the shipped sentences, the encoder and the index type (else rebuilt)."""
    cache = Path(cache_dir)
    sentences = load_seed_sentences()
    expected = source_hash(sentences, text_encoder.name, text_encoder.name, index_type)
    if (cache / "manifest.json").is_file():
        try:
            if read_manifest(cache).get("source_hash") == expected:
                return SentenceDatabase.load(cache, device=device)
            log.info("seed index is stale (sentences, encoder or index type changed); rebuilding", path=str(cache))
        except IndexMismatchError as exc:
            log.warning("seed index unusable; rebuilding", path=str(cache), error=str(exc))
    elif cache.exists() and any(cache.iterdir()):
        raise IndexMismatchError(f"{cache} exists, is not empty and holds no index manifest; refusing to overwrite it")
    db = SentenceDatabase.from_sentences(sentences, text_encoder, index_type=index_type, progress=progress)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.parent / f".{cache.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    db.save(tmp)
    try:
        if cache.exists():
            shutil.rmtree(cache)
        os.replace(tmp, cache)
    except OSError as exc:  # another process won the race: use its copy
        log.info("seed index written concurrently by another process; using it", path=str(cache), error=str(exc))
        shutil.rmtree(tmp, ignore_errors=True)
    return db.to(device) if device is not None else db


def open_database(
    index_dir: str | Path | None,
    text_encoder: _Encoder,
    *,
    artifacts_dir: str | Path | None = None,
    device: str | None = None,
    embedding_encoder_name: str | None = None,
) -> SentenceDatabase:
    """The ``index_dir`` setting resolved: a built index folder (checked against the encoders),
    or, when None, the shipped-seed index cached under ``default_index_dir(artifacts_dir)``."""
    if index_dir is None:
        return ensure_seed_index(default_index_dir(artifacts_dir), text_encoder, device=device)
    m = read_manifest(index_dir)
    if m["text_encoder"]["name"] != text_encoder.name or m["text_encoder"]["dim"] != text_encoder.dim:
        raise IndexMismatchError(
            f"index {index_dir} holds features of {m['text_encoder']['name']} ({m['text_encoder']['dim']}-d) but the "
            f"text encoder is {text_encoder.name} ({text_encoder.dim}-d); rebuild it with `moodwatch index build`"
        )
    if embedding_encoder_name is not None and m["embedding_encoder"]["name"] != embedding_encoder_name:
        raise IndexMismatchError(
            f"index {index_dir} is built in the space of {m['embedding_encoder']['name']}, not {embedding_encoder_name}"
        )
    return SentenceDatabase.load(index_dir, device=device)
