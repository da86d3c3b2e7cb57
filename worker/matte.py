"""Mattes: how an edited layer gets its alpha back.

The edit model sees the layer composited over a flat backdrop and answers an RGB image; a matte turns
that image (already resized to the source layer's size) plus the source layer into an RGBA layer.

- `keep`: the source alpha, bit for bit (recolour and retexture edits that keep the shape).
- `chroma` (default): key out the backdrop colour by its distance in the CbCr plane, with a linear
  ramp between two thresholds (soft edges), then despill the edge pixels.
- `model`: a foreground-segmentation model loaded through transformers by hub id or local dir (off
  unless configured; see docs/edit.md for why RMBG-2.0 is not the default).

Every matte un-mixes the backdrop from partly transparent pixels: a pixel the model drew as
`a·fg + (1−a)·backdrop` gets `fg` back, so edges carry no green fringe over another background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

# The authors' backdrop (src/tool/edit_rgba_image.py in QwenLM/Qwen-Image-Layered).
BACKDROP: tuple[int, int, int] = (30, 215, 96)
MATTES = ("keep", "chroma", "model")
DEFAULT_MATTE = "chroma"

# CbCr distances (0–255 scale). The backdrop's chroma is ~(100, 45); neutral greys and whites sit ~88
# away, so 64 keeps them fully opaque. Below 24 a pixel is the backdrop give or take the colour drift a
# generative model adds to a flat area; in between, alpha rises linearly (the soft edge).
CHROMA_TRANSPARENT_BELOW = 24.0
CHROMA_OPAQUE_ABOVE = 64.0


class Matte(Protocol):
    """Turns the edited RGB image (at the source's size) and the source RGBA layer into an RGBA layer."""

    name: str

    def __call__(self, edited: Image.Image, source: Image.Image) -> Image.Image: ...


def on_backdrop(layer: Image.Image, backdrop: tuple[int, int, int] = BACKDROP) -> Image.Image:
    """The RGBA layer alpha-composited over the flat backdrop, as RGB (what the edit model sees)."""
    base = Image.new("RGBA", layer.size, (*backdrop, 255))
    return Image.alpha_composite(base, layer.convert("RGBA")).convert("RGB")


def _chroma(rgb: np.ndarray) -> np.ndarray:
    """(Cb, Cr) per pixel, ITU-R BT.601 (as PIL's YCbCr), float32, shape (..., 2)."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([cb, cr], axis=-1)


def unmix(rgb: np.ndarray, alpha: np.ndarray, backdrop: np.ndarray) -> np.ndarray:
    """Recover foreground colours from `alpha·fg + (1−alpha)·backdrop`, then despill the edges.

    Only partly transparent pixels change: opaque ones are the foreground already, transparent ones are
    invisible. After un-mixing, an edge pixel's green may still exceed both red and blue where the
    estimated alpha was off; it is clamped to max(red, blue) (classic green despill), edge pixels only,
    so a green object's interior keeps its colour.
    """
    out = rgb.astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255.0
    edge = (alpha > 0) & (alpha < 255)
    fg = (out - (1.0 - a) * backdrop.astype(np.float32)) / np.maximum(a, 1e-3)
    out = np.where(edge[..., None], fg, out)
    out = np.clip(out, 0.0, 255.0)
    limit = np.maximum(out[..., 0], out[..., 2])
    out[..., 1] = np.where(edge, np.minimum(out[..., 1], limit), out[..., 1])
    return np.rint(out).astype(np.uint8)


def _rgba(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8)]), "RGBA")


@dataclass(frozen=True)
class KeepMatte:
    """The source layer's alpha, unchanged."""

    backdrop: tuple[int, int, int] = BACKDROP
    name: str = "keep"

    def __call__(self, edited: Image.Image, source: Image.Image) -> Image.Image:
        alpha = np.asarray(source.convert("RGBA"))[..., 3]
        rgb = unmix(np.asarray(edited.convert("RGB")), alpha, np.array(self.backdrop))
        return _rgba(rgb, alpha)


@dataclass(frozen=True)
class ChromaMatte:
    """Key out the backdrop colour: CbCr distance → linear ramp between two thresholds → despill."""

    backdrop: tuple[int, int, int] = BACKDROP
    transparent_below: float = CHROMA_TRANSPARENT_BELOW
    opaque_above: float = CHROMA_OPAQUE_ABOVE
    name: str = "chroma"

    def key_colour(self, rgb: np.ndarray) -> np.ndarray:
        """The backdrop as the model actually drew it: the median of pixels near the nominal colour.

        A generative model shifts a flat area's colour a little; keying against what it drew keeps the
        thresholds tight. Falls back to the nominal colour when too few pixels are near it.
        """
        nominal = np.array(self.backdrop, dtype=np.float32)
        near = np.linalg.norm(rgb.astype(np.float32) - nominal, axis=-1) < 40.0
        if near.sum() < max(16, rgb.shape[0] * rgb.shape[1] // 100):
            return nominal
        return np.median(rgb[near].astype(np.float32), axis=0)

    def alpha(self, rgb: np.ndarray, key: np.ndarray) -> np.ndarray:
        distance = np.linalg.norm(_chroma(rgb) - _chroma(key), axis=-1)
        ramp = (distance - self.transparent_below) / (self.opaque_above - self.transparent_below)
        return np.rint(np.clip(ramp, 0.0, 1.0) * 255.0).astype(np.uint8)

    def __call__(self, edited: Image.Image, source: Image.Image) -> Image.Image:
        rgb = np.asarray(edited.convert("RGB"))
        key = self.key_colour(rgb)
        alpha = self.alpha(rgb, key)
        return _rgba(unmix(rgb, alpha, key), alpha)


class ModelMatte:
    """Foreground probability from a semantic-segmentation model loaded through transformers.

    Any `AutoModelForSemanticSegmentation` checkpoint whose labels include `foreground` (else label 1)
    works; the alpha is that label's softmax probability, resized to the layer's size.
    """

    name = "model"

    def __init__(self, model: str | Path, device: str = "cpu", backdrop: tuple[int, int, int] = BACKDROP) -> None:
        from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

        self.processor = AutoImageProcessor.from_pretrained(str(model))
        self.model = AutoModelForSemanticSegmentation.from_pretrained(str(model)).to(device).eval()
        labels = {name.lower(): int(i) for i, name in self.model.config.id2label.items()}
        self.foreground = labels.get("foreground", 1)
        self.device = device
        self.backdrop = backdrop

    def __call__(self, edited: Image.Image, source: Image.Image) -> Image.Image:
        import torch

        rgb_image = edited.convert("RGB")
        inputs = self.processor(images=rgb_image, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits  # (1, labels, h, w), at a fraction of the input size
            logits = torch.nn.functional.interpolate(
                logits.float(), size=(rgb_image.height, rgb_image.width), mode="bilinear", align_corners=False
            )
            prob = logits.softmax(dim=1)[0, self.foreground]
        alpha = np.rint(prob.cpu().numpy() * 255.0).astype(np.uint8)
        rgb = unmix(np.asarray(rgb_image), alpha, np.array(self.backdrop))
        return _rgba(rgb, alpha)


def get_matte(name: str, *, model: str | Path | None = None, device: str = "cpu") -> Matte:
    """The matte called `name`; `model` (hub id or local dir) is required for the `model` matte."""
    if name == "keep":
        return KeepMatte()
    if name == "chroma":
        return ChromaMatte()
    if name == "model":
        if not model:
            raise ValueError("the 'model' matte is not configured (no segmentation model set)")
        return ModelMatte(model, device=device)
    raise ValueError(f"unknown matte {name!r}; choose one of {', '.join(MATTES)}")
