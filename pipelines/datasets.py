"""Readers for the benchmark data in ../shared/data (read by path, never copied into the project)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

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
