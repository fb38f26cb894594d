"""Readers for the benchmark data in ../shared/data (read by path, never copied into the project)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.text import clean_post_text
from schemas.emotions import EMOTION6_LABELS, POLARITY3

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUBSETS = ("three", "four", "five")


class DatasetNotFound(FileNotFoundError):
    pass


def default_data_dir() -> Path:
    return Path(os.environ.get("MOODWATCH_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Twitter1Item:
    name: str  # file name, the stable id
    path: Path
    label: int  # 1 positive, 0 negative
    caption: str


def twitter1_root(data_dir: Path | None = None) -> Path:
    root = Path(data_dir or default_data_dir())
    root = root / "twitter1-dev" if (root / "twitter1-dev").is_dir() else root
    if not (root / "images").is_dir():
        raise DatasetNotFound(f"Twitter I data not found under {root} (expected images/ and twitter_*_agrees.txt)")
    return root


def load_twitter1(subset: str = "five", data_dir: Path | None = None) -> list[Twitter1Item]:
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    root = twitter1_root(data_dir)
    captions = {}
    caption_file = root / "captions.csv"
    if caption_file.is_file():
        with caption_file.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                captions[Path(row["id"]).name] = " ".join(row["caption"].split())
    items = []
    for line in (root / f"twitter_{subset}_agrees.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, label = line.split()
        items.append(Twitter1Item(name, root / "images" / name, int(label), captions.get(Path(name).stem, "")))
    return items


# -- MVSA-Single (image + text, three-way polarity) ---------------------------------------------------


@dataclass(frozen=True)
class MvsaPost:
    """One MVSA-Single tweet: its image, its text and the CLMLF label (positive / neutral / negative)."""

    id: str
    split: str  # train | dev
    label_name: str
    text: str
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> int:
        return POLARITY3.index(self.label_name)

    @property
    def caption(self) -> str:  # what the feature cache embeds with the text encoder, cleaned as at inference
        return clean_post_text(self.text)


def mvsa_root(data_dir: Path | None = None) -> Path:
    root = Path(data_dir or default_data_dir())
    root = root / "mvsa-single-dev" if (root / "mvsa-single-dev").is_dir() else root
    if not (root / "posts.jsonl").is_file() or not (root / "images").is_dir():
        raise DatasetNotFound(f"MVSA-Single data not found under {root} (expected posts.jsonl and images/)")
    return root


def load_mvsa(data_dir: Path | None = None, split: str | None = None) -> list[MvsaPost]:
    """Posts of MVSA-Single in file order; ``split`` train | dev keeps one split (None: every post)."""
    root = mvsa_root(data_dir)
    posts = []
    with (root / "posts.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if row["label"] not in POLARITY3:
                raise ValueError(f"MVSA post {row['id']}: unknown label {row['label']!r}")
            post = MvsaPost(
                str(row["id"]), row["split"], row["label"], row.get("text") or "", root / "images" / f"{row['id']}.jpg"
            )
            if split is None or post.split == split:
                posts.append(post)
    return posts


# -- Emotion6 (human emotion distributions) ------------------------------------------------------------


@dataclass(frozen=True)
class Emotion6Item:
    name: str  # "<search folder>/<n>.jpg", the stable id
    path: Path
    folder: str  # the search keyword the image was found with (the stratum of the 10-fold split)
    valence: float
    arousal: float
    distribution: tuple[float, ...]  # over EMOTION6_LABELS, sums to 1

    @property
    def label(self) -> int:
        return EMOTION6_LABELS.index(self.folder)

    @property
    def caption(self) -> str:
        return ""


def emotion6_root(data_dir: Path | None = None) -> Path:
    root = Path(data_dir or default_data_dir())
    root = root / "emotion6-dev" if (root / "emotion6-dev").is_dir() else root
    if not (root / "ground_truth.txt").is_file() or not (root / "images").is_dir():
        raise DatasetNotFound(f"Emotion6 data not found under {root} (expected ground_truth.txt and images/)")
    return root


def load_emotion6(data_dir: Path | None = None) -> list[Emotion6Item]:
    root = emotion6_root(data_dir)
    items = []
    with (root / "ground_truth.txt").open(encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        next(reader)  # header: [image_filename] [valence] [arousal] [prob. anger] ... [prob. neutral]
        for row in reader:
            if not row:
                continue
            name, valence, arousal, *probs = row
            dist = [float(p) for p in probs]
            if len(dist) != len(EMOTION6_LABELS):
                raise ValueError(f"Emotion6 {name}: expected {len(EMOTION6_LABELS)} probabilities, got {len(dist)}")
            total = sum(dist)
            items.append(
                Emotion6Item(
                    name,
                    root / "images" / name,
                    name.split("/", 1)[0],
                    float(valence),
                    float(arousal),
                    tuple(p / total for p in dist),
                )
            )
    return items
