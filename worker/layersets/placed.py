"""A layer with a position on the canvas, and the canvas-sized stack every export takes.

Decomposition outputs are canvas-sized, but a moved or scaled layer and an uploaded layer are not:
`PlacedLayer` keeps the image as it is plus its top-left offset (which may be negative or reach past
the canvas), and `render_stack` crops and pads each one onto the canvas only when exporting, so an
operation that moves a layer out and back loses nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from worker.exports import composite


@dataclass(frozen=True)
class Canvas:
    """The layer set's picture size in pixels."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"canvas must have a positive size, got {self.width}x{self.height}")

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


@dataclass(frozen=True)
class PlacedLayer:
    """One RGBA layer: its pixels, where its top-left corner sits on the canvas, and its state.

    `source` is the layer's index in the parent set (None for a layer that has none, e.g. an upload):
    operations address layers by it, so deleting or reordering earlier does not renumber them.
    `opacity` multiplies the alpha when rendered; a hidden layer is left out of the rendered stack.
    """

    image: Image.Image
    x: int = 0
    y: int = 0
    opacity: float = 1.0
    visible: bool = True
    source: int | None = None

    def __post_init__(self) -> None:
        if self.image.mode != "RGBA":
            object.__setattr__(self, "image", self.image.convert("RGBA"))

    def moved(self, dx: int, dy: int) -> PlacedLayer:
        return replace(self, x=self.x + dx, y=self.y + dy)

    def content_box(self) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) of the pixels with alpha > 0, in canvas coordinates; None if none."""
        box = self.image.getchannel("A").getbbox()
        if box is None:
            return None
        left, top, right, bottom = box
        return left + self.x, top + self.y, right + self.x, bottom + self.y


def place(layer: PlacedLayer, canvas: Canvas) -> Image.Image:
    """The layer as a canvas-sized RGBA image: cropped where it reaches past the canvas, transparent
    where it does not cover it, its opacity multiplied into the alpha (visibility is ignored)."""
    placed = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    placed.paste(layer.image, (layer.x, layer.y))  # a plain copy, alpha included; Pillow clips to the canvas
    if layer.opacity >= 1.0:
        return placed
    pixels = np.array(placed)
    # Round half up, as Pillow's own 8-bit arithmetic does.
    pixels[..., 3] = np.floor(pixels[..., 3].astype(np.float64) * max(layer.opacity, 0.0) + 0.5).astype(np.uint8)
    return Image.fromarray(pixels, "RGBA")


def render_stack(layers: Sequence[PlacedLayer], canvas: Canvas) -> list[Image.Image]:
    """The visible layers, bottom first, each :func:`place`-d on the canvas: what the exports take.

    Hidden layers are left out (they contribute nothing to the composite); a set whose every layer
    is hidden renders as one transparent layer, since every export needs at least one.
    """
    stack = [place(layer, canvas) for layer in layers if layer.visible]
    return stack or [Image.new("RGBA", canvas.size, (0, 0, 0, 0))]


def flatten(layers: Sequence[PlacedLayer], canvas: Canvas) -> Image.Image:
    """The set's composite: :func:`worker.exports.composite` of :func:`render_stack`."""
    return composite(render_stack(layers, canvas))


def from_stack(images: Sequence[Image.Image]) -> list[PlacedLayer]:
    """A decomposition's canvas-sized layers (bottom first) as placed layers numbered by their index."""
    return [PlacedLayer(image, source=index) for index, image in enumerate(images)]
