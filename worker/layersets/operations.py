"""Apply a `compose` job's operations to a layer set: pure functions of (layers, ops, canvas).

The ops were validated by `layerq.layer_ops.parse_ops`; `apply_ops` re-checks them against the set
(`check_ops`), so a message that skipped the API still fails with the field named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from PIL import Image

from layerq.layer_ops import (
    Delete, Hide, LayerOp, Move, Opacity, Recolour, Reorder, Scale, check_ops,
)

from .placed import Canvas, PlacedLayer, from_stack

# Where each anchor sits in the content box, as fractions of its width and height.
_ANCHORS: dict[str, tuple[float, float]] = {
    "top-left": (0, 0), "top": (0.5, 0), "top-right": (1, 0),
    "left": (0, 0.5), "center": (0.5, 0.5), "right": (1, 0.5),
    "bottom-left": (0, 1), "bottom": (0.5, 1), "bottom-right": (1, 1),
}


def apply_ops(layers: Sequence[PlacedLayer], ops: Sequence[LayerOp], canvas: Canvas) -> list[PlacedLayer]:
    """The layer set after *ops*, in order. *layers* is the parent set bottom first; ops address
    layers by ``PlacedLayer.source`` (their index in the parent; :func:`from_stack` numbers them).
    The inputs are not modified.

    :raises ValidationFailed: an op does not fit the set (see ``check_ops``).
    """
    check_ops(ops, len(layers), canvas.width, canvas.height)
    # A layer without a parent index (an upload) is addressed by its place in *layers*.
    stack = [layer if layer.source is not None else replace(layer, source=i) for i, layer in enumerate(layers)]
    for op in ops:
        position = next(i for i, layer in enumerate(stack) if layer.source == op.index)
        layer = stack[position]
        if isinstance(op, Delete):
            del stack[position]
        elif isinstance(op, Hide):
            stack[position] = replace(layer, visible=False)
        elif isinstance(op, Reorder):
            del stack[position]
            target = op.position if op.position >= 0 else len(stack) + 1 + op.position
            stack.insert(target, layer)
        elif isinstance(op, Move):
            stack[position] = layer.moved(op.dx, op.dy)
        elif isinstance(op, Scale):
            stack[position] = scale_layer(layer, op.factor, op.anchor)
        elif isinstance(op, Recolour):
            image = hue_shifted(layer.image, op.hue_shift) if op.hue_shift is not None \
                else tinted(layer.image, op.tint or "#000000", op.strength)
            stack[position] = replace(layer, image=image)
        elif isinstance(op, Opacity):
            stack[position] = replace(layer, opacity=op.value)
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"unknown operation {op!r}")
    return stack


def compose(parent: Sequence[Image.Image], ops: Sequence[LayerOp]) -> tuple[Canvas, list[PlacedLayer]]:
    """What a `compose` job computes: the parent set's canvas-sized layers (bottom first, as stored)
    after *ops*. Export ``render_stack(layers, canvas)``.

    :raises ValidationFailed: an op does not fit the parent set.
    """
    canvas = Canvas(*parent[0].size)
    return canvas, apply_ops(from_stack(parent), ops, canvas)


def scale_layer(layer: PlacedLayer, factor: float, anchor: str = "center") -> PlacedLayer:
    """*layer* with its content (the bounding box of alpha > 0) resized by *factor*, the box's
    *anchor* point kept in place (to the nearest pixel). Resampled with Lanczos on premultiplied
    colour (Pillow premultiplies RGBA for resizing), so no dark fringe appears at soft edges. A fully
    transparent layer is returned unchanged."""
    box = layer.image.getchannel("A").getbbox()
    if box is None or factor == 1:
        return layer
    left, top, right, bottom = box
    content = layer.image.crop(box)
    width = max(1, round(content.width * factor))
    height = max(1, round(content.height * factor))
    resized = content.resize((width, height), Image.Resampling.LANCZOS)
    ax, ay = _ANCHORS[anchor]
    # The anchor's canvas position before and after must coincide.
    anchor_x = layer.x + left + ax * content.width
    anchor_y = layer.y + top + ay * content.height
    return replace(layer, image=resized, x=round(anchor_x - ax * width), y=round(anchor_y - ay * height))


def hue_shifted(image: Image.Image, degrees: float) -> Image.Image:
    """*image* with every pixel's hue turned by *degrees* (HSV, saturation and value kept); alpha
    untouched. A shift of a whole turn returns the image itself."""
    steps = round((degrees % 360) / 360 * 256) % 256  # Pillow's HSV hue is 0-255 for a full turn
    if steps == 0:
        return image.copy()
    hsv = np.array(image.convert("RGB").convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + steps) % 256
    rgb = Image.fromarray(hsv, "HSV").convert("RGB")
    rgb.putalpha(image.getchannel("A"))
    return rgb


def tinted(image: Image.Image, colour: str, strength: float = 1.0) -> Image.Image:
    """*image* tinted towards *colour* (#rrggbb): each pixel's luminance times the colour, blended
    with the original by *strength* (0 = unchanged, 1 = fully tinted). Alpha untouched."""
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], np.float64) / 255
    pixels = np.asarray(image).astype(np.float64)
    luminance = pixels[..., :3] @ np.array([0.299, 0.587, 0.114])
    tint = luminance[..., None] * target
    rgb = pixels[..., :3] * (1 - strength) + tint * strength
    out = np.empty_like(np.asarray(image))
    out[..., :3] = np.clip(np.floor(rgb + 0.5), 0, 255).astype(np.uint8)
    out[..., 3] = np.asarray(image)[..., 3]
    return Image.fromarray(out, "RGBA")
