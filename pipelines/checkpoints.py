"""Saving and loading the trained heads with their model card."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from models.moodnet import HeadsConfig, MoodHeads

DEFAULT_HEADS = Path(__file__).resolve().parent.parent / "models" / "weights" / "heads.pt"


class CheckpointError(RuntimeError):
    pass


def heads_version(heads: MoodHeads) -> str:
    return _state_digest(heads.state_dict())


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    """Content hash of float32 weights (what a loaded checkpoint holds), so saved and loaded heads agree."""
    digest = hashlib.sha256()
    for key, tensor in sorted(state.items()):
        digest.update(key.encode())
        tensor = tensor.detach().cpu()
        digest.update((tensor.float() if tensor.is_floating_point() else tensor).contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def save_heads(heads: MoodHeads, path: Path, card: dict[str, Any]) -> Path:
    """Write `heads.pt` (fp16 weights + config + card) and a human-readable `MODEL_CARD.md` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in heads.state_dict().items()}
    card = {**card, "version": _state_digest(state)}
    torch.save({"config": heads.config.to_dict(), "state_dict": state, "card": card}, path)
    (path.parent / "MODEL_CARD.md").write_text(render_card(card))
    (path.parent / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    return path


def load_heads(path: Path, device: str = "cpu") -> tuple[MoodHeads, dict[str, Any]]:
    if not Path(path).is_file():
        raise CheckpointError(
            f"heads checkpoint not found: {path} (train one with `moodwatch train`, or unset MOODWATCH_HEADS_PATH "
            f"to use the shipped default)"
        )
    blob = torch.load(path, map_location=device, weights_only=False)
    heads = MoodHeads(HeadsConfig.from_dict(blob["config"]))
    heads.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in blob["state_dict"].items()})
    return heads.eval().to(device), blob.get("card", {})


def render_card(card: dict[str, Any]) -> str:
    lines = ["# moodwatch heads — model card", ""]
    for key in ("version", "created_at", "seed", "index", "image_encoder", "text_encoder"):
        if key in card:
            lines.append(f"- **{key}**: {card[key]}")
    if "supervision" in card:
        lines += ["", "## What supervised what", ""]
        lines += [f"- **{k}**: {v}" for k, v in card["supervision"].items()]
    if "data" in card:
        lines += ["", "## Data", ""] + [f"- **{k}**: {v}" for k, v in card["data"].items()]
    if "commands" in card:
        lines += ["", "## Commands", ""] + [f"- **{k}**: `{v}`" for k, v in card["commands"].items()]
    if "metrics" in card:
        lines += ["", "## Metrics", "", "```", json.dumps(card["metrics"], indent=2), "```"]
    if "fine_tuned_on_reviews" in card:
        tuned = card["fine_tuned_on_reviews"]
        lines += ["", "## Fine-tuned on human reviews", "", f"- **base heads**: {card.get('base_heads')}"]
        lines += [f"- **{k}**: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in tuned.items()]
    if "limitations" in card:
        lines += ["", "## Limitations", "", card["limitations"]]
    return "\n".join(lines) + "\n"
