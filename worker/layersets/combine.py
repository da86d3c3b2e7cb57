"""Combine: several RGBA layers, bottom to top, of any sizes and at any offsets, into one layer set
(the server side of the model authors' combine tool).

Canvas rule: an explicit canvas wins; otherwise the canvas runs from (0, 0) to the furthest right
and bottom edge of any layer, so every offset keeps meaning "position on the canvas" (as ORA's x
and y do) and nothing at a non-negative offset is cut. Parts of a layer left of or above (0, 0), or
past an explicit canvas, are cropped in the exports (the layer itself keeps them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from layerq.layer_ops import MAX_CANVAS_SIDE
from worker.exports import composite

from .placed import Canvas, PlacedLayer, render_stack

__all__ = ["MAX_CANVAS_SIDE", "LayerSet", "canvas_for", "combine"]  # MAX_CANVAS_SIDE: a stray offset must not allocate gigabytes


@dataclass(frozen=True)
class LayerSet:
    """A set of placed layers on a canvas. `stack` is what the exports take: the visible layers,
    bottom first, each canvas-sized (see `render_stack`)."""

    canvas: Canvas
    layers: tuple[PlacedLayer, ...]

    @property
    def stack(self) -> list[Image.Image]:
        return render_stack(self.layers, self.canvas)

    def composite(self) -> Image.Image:
        return composite(self.stack)


def canvas_for(layers: Sequence[PlacedLayer]) -> Canvas:
    """The default canvas of *layers*: (0, 0) to the furthest right and bottom edge of any layer.

    :raises ValueError: no layer, no layer reaching right of or below (0, 0), or a side over
        :data:`MAX_CANVAS_SIDE`.
    """
    if not layers:
        raise ValueError("combine needs at least one layer")
    width = max(layer.x + layer.image.width for layer in layers)
    height = max(layer.y + layer.image.height for layer in layers)
    if width <= 0 or height <= 0:
        raise ValueError("every layer lies left of or above the canvas origin")
    if max(width, height) > MAX_CANVAS_SIDE:
        raise ValueError(f"the layers span {width}x{height} px; at most {MAX_CANVAS_SIDE} px a side")
    return Canvas(width, height)


def combine(layers: Sequence[PlacedLayer | Image.Image], canvas: Canvas | None = None) -> LayerSet:
    """Layers bottom first (plain images sit at (0, 0)) as a layer set on *canvas* (default:
    :func:`canvas_for`). Each layer's ``source`` is its upload index, so a later compose job can
    address it.

    :raises ValueError: as :func:`canvas_for`.
    """
    placed = [
        layer if isinstance(layer, PlacedLayer) else PlacedLayer(layer)
        for layer in layers
    ]
    placed = [
        PlacedLayer(layer.image, layer.x, layer.y, layer.opacity, layer.visible, index)
        for index, layer in enumerate(placed)
    ]
    return LayerSet(canvas or canvas_for(placed), tuple(placed))
