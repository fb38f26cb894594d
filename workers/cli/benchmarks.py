"""`moodwatch eval mvsa` and `moodwatch eval emotion6` (registered on the `eval` group of workers.cli.train).

Every eval command ends with one JSON line of its metrics on stdout; tables and progress go to stderr.
With --shipped the shipped heads (MOODWATCH_HEADS_PATH) are scored, untrained further, on every
labelled item of the folder whatever its split.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from workers.cli.train import console, eval_app
from workers.common.settings import AnalysisSettings


def emit_json(record: dict) -> None:
    typer.echo(json.dumps(record, default=float))


def print_table(title: str, rows: dict[str, dict[str, float]], columns: tuple[str, ...]) -> None:
    table = Table(title=title)
    table.add_column("model")
    for col in columns:
        table.add_column(col)
    for name, metrics in rows.items():
        if all(c in metrics for c in columns):
            table.add_row(name, *(f"{metrics[c]:.4f}" for c in columns))
    Console(stderr=True).print(table)


def _fail(exc: Exception) -> typer.Exit:
    from pipelines.datasets import default_data_dir

    console.print(f"[red]error:[/red] {exc}. Pass --data DIR (default {default_data_dir()}).")
    return typer.Exit(2)


def features_of(items, root: Path, prefix: str, settings: AnalysisSettings):
    """Frozen features of ``items`` (cached per data folder under artifacts/cache), and the text encoder."""
    from models.encoders import load_image_backbone, load_text_encoder
    from pipelines.features import cached_features

    text_encoder = load_text_encoder(settings.text_encoder, "cpu")
    backbone = load_image_backbone(settings.image_encoder, "cpu")
    folder = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    console.print(f"features for {len(items)} images of {root} (cached under {settings.artifacts_dir / 'cache'})")
    cache = cached_features(
        items, backbone, text_encoder, settings.artifacts_dir / "cache", regions=False, prefix=f"{prefix}-{folder}"
    )
    return cache, text_encoder


def _database(index: Optional[Path], settings: AnalysisSettings, text_encoder):
    from pipelines.retrieval import SentenceDatabase, default_index_dir, ensure_seed_index

    return (
        SentenceDatabase.load(index)
        if index
        else ensure_seed_index(default_index_dir(settings.artifacts_dir), text_encoder)
    )


def shipped_heads(settings: AnalysisSettings):
    from pipelines.checkpoints import DEFAULT_HEADS, load_heads

    path = settings.heads_path if settings.heads_path.exists() else DEFAULT_HEADS
    heads, card = load_heads(path)
    return heads, card.get("version", "unknown")


@eval_app.command("mvsa")
def eval_mvsa(
    data: Optional[Path] = typer.Option(
        None, "--data", help="folder holding mvsa-single-dev/ (default ../shared/data)"
    ),
    index: Optional[Path] = typer.Option(None, help="retrieval index folder (default: the shipped seed index)"),
    seed: int = typer.Option(0),
    shipped: bool = typer.Option(False, "--shipped", help="score the shipped heads on every post, whatever its split"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the table as JSON"),
) -> None:
    """MVSA-Single, three classes: accuracy and weighted F1 on dev after training on train, with the ablations."""
    import numpy as np

    from pipelines.datasets import DatasetNotFound, load_mvsa, mvsa_root

    settings = AnalysisSettings()
    try:
        root, posts = mvsa_root(data), load_mvsa(data)
    except DatasetNotFound as exc:
        raise _fail(exc) from exc
    cache, text_encoder = features_of(posts, root, "mvsa", settings)
    db = _database(index, settings, text_encoder)
    if shipped:
        from pipelines.evaluate_mvsa import score_shipped

        heads, version = shipped_heads(settings)
        metrics = score_shipped(heads, db, cache)
        print_table(
            f"MVSA-Single, shipped heads {version}, {len(posts)} posts",
            {"shipped": metrics},
            ("accuracy", "weighted_f1", "macro_f1", "evidence_top1"),
        )
        emit_json({"eval": "mvsa", "model": "shipped", "heads": version, "posts": len(posts), **metrics})
        return
    from pipelines.evaluate_mvsa import evaluate_mvsa
    from pipelines.train import mvsa_config

    split = np.array([p.split for p in posts])
    if not (split == "train").any() or not (split == "dev").any():
        raise _fail(ValueError(f"{root} needs posts of both splits train and dev (or use --shipped)"))
    train, dev = cache.subset(np.flatnonzero(split == "train")), cache.subset(np.flatnonzero(split == "dev"))
    console.print(f"MVSA-Single: train {len(train.names)}, dev {len(dev.names)}; index {db.version} ({len(db)})")
    table = evaluate_mvsa(train, dev, db, mvsa_config(seed), progress=console.log)
    print_table(f"MVSA-Single dev, trained on train (seed {seed})", table, ("accuracy", "weighted_f1", "macro_f1"))
    evidence = table.get("evidence agreement (fused, dev)", {})
    console.print(
        "evidence agreement with the verdict (dev): " + ", ".join(f"{k} {v:.3f}" for k, v in evidence.items())
    )
    if json_out:
        json_out.write_text(json.dumps({"seed": seed, "table": table}, indent=2))
    emit_json({"eval": "mvsa", "model": "trained on train", "seed": seed, "table": table})


@eval_app.command("emotion6")
def eval_emotion6(
    data: Optional[Path] = typer.Option(None, "--data", help="folder holding emotion6-dev/ (default ../shared/data)"),
    folds: int = typer.Option(10),
    seed: int = typer.Option(0),
    shipped: bool = typer.Option(False, "--shipped", help="score the shipped heads on every image"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the results as JSON"),
) -> None:
    """Emotion6 under EW-MTCNN's protocol: stratified 10-fold CV, six distribution metrics + top-1 accuracy."""
    import numpy as np

    from pipelines.datasets import DatasetNotFound, emotion6_root, load_emotion6
    from pipelines.emotion6 import METRICS, Emotion6Config, cross_validate, score_shipped

    settings = AnalysisSettings()
    try:
        root, items = emotion6_root(data), load_emotion6(data)
    except DatasetNotFound as exc:
        raise _fail(exc) from exc
    cache, _ = features_of(items, root, "emotion6", settings)
    targets = np.array([item.distribution for item in items])
    heads, version = shipped_heads(settings)
    reference = score_shipped(heads, cache.pooled, targets)
    if shipped:
        print_table(f"Emotion6, shipped heads {version}, {len(items)} images", reference, METRICS)
        emit_json(
            {
                "eval": "emotion6",
                "model": "shipped",
                "heads": version,
                "images": len(items),
                **reference["emotion6 head"],
                "mikels_mapped": reference["Mikels head mapped"],
            }
        )
        return
    cfg = Emotion6Config(seed=seed)
    pooled, per_fold, _ = cross_validate(
        cache.pooled, cache.pooled_flip, targets, np.array([item.folder for item in items]), cfg, folds, console.log
    )
    std = {f"{k}_std": float(np.std([f[k] for f in per_fold])) for k in METRICS}
    rows = {
        f"Emotion6 head, {folds}-fold CV": pooled,
        "shipped Mikels head through the mapping (not trained on Emotion6)": reference["Mikels head mapped"],
    }
    print_table(f"Emotion6, stratified {folds}-fold (seed {seed})", rows, METRICS)
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "folds": folds,
                    "seed": seed,
                    "config": cfg.to_dict(),
                    "cv": pooled,
                    "per_fold": per_fold,
                    "mikels_mapped": reference["Mikels head mapped"],
                },
                indent=2,
            )
        )
    emit_json({"eval": "emotion6", "model": f"{folds}-fold CV", "seed": seed, **pooled, **std})
