"""Synthetic layers and a numpy reference compositor for the layer-set tests."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGBA")).astype(np.int32)


def shape_layer(size: tuple[int, int], box: tuple[int, int, int, int], colour: tuple[int, int, int, int],
                kind: str = "rectangle") -> Image.Image:
    """A transparent layer with one flat shape (hard edges)."""
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    getattr(draw, kind)(box, fill=colour)
    return layer


def soft_blob(size: tuple[int, int], centre: tuple[float, float], radius: float, rgb: tuple[int, int, int]) -> Image.Image:
    """A smooth (Gaussian-edged) disc: resampling it is nearly lossless, unlike a hard edge."""
    height, width = size[1], size[0]
    y, x = np.mgrid[0:height, 0:width]
    distance = np.hypot(x - centre[0], y - centre[1])
    alpha = np.clip(np.exp(-((distance / radius) ** 2)) * 255, 0, 255)
    out = np.zeros((height, width, 4), np.uint8)
    out[..., :3] = rgb
    out[..., 3] = np.floor(alpha + 0.5).astype(np.uint8)
    return Image.fromarray(out, "RGBA")


def reference_over(layers: list[np.ndarray]) -> np.ndarray:
    """Porter-Duff "over", bottom first, straight alpha, in float64: the independent reference the
    exports are compared against (Pillow's alpha_composite rounds differently, by at most a level)."""
    out = np.zeros(layers[0].shape, np.float64)
    for layer in layers:
        src = layer.astype(np.float64)
        sa, da = src[..., 3:] / 255, out[..., 3:] / 255
        oa = sa + da * (1 - sa)
        safe = np.where(oa > 0, oa, 1)
        out[..., :3] = np.where(oa > 0, (src[..., :3] * sa + out[..., :3] * da * (1 - sa)) / safe, 0)
        out[..., 3:] = oa * 255
    return out


def premultiplied(rgba: np.ndarray) -> np.ndarray:
    """Colour times alpha (0..255): straight colour under alpha ~0 is meaningless, so compare this."""
    out = rgba.astype(np.float64).copy()
    out[..., :3] *= out[..., 3:] / 255
    return out
