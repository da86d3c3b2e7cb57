"""Pixel-level helpers shared by every export: validation, compositing, PNG encoding."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

# zlib level for every PNG we write. Measured on the sample posters (Pillow 13, one core):
# a full 640x640 RGBA layer encodes in ~28 ms / 555 KiB at level 1, ~42 ms / 506 KiB at
# level 4 and ~110 ms / 486 KiB at Pillow's default 6; at 1024x1024 the figures are
# ~65 / ~105 / ~280 ms. Level 4 is the knee: zlib switches to lazy matching there, which
# buys files within ~4 % of level 6 at well under half its time, while level 1-3 files
# are 10-20 % bigger for little time saved. Exports are downloaded far more often
# than written, so the smaller file is worth ~15 ms a layer.
PNG_COMPRESS_LEVEL = 4


def validate_layers(layers: Sequence[Image.Image]) -> list[Image.Image]:
    """Check a layer stack and return it as a list of RGBA images.

    Contract: *layers* is a non-empty sequence of PIL images, bottom first, all of one
    non-zero size. Images in another mode are converted to RGBA (a palette or grey PNG
    read back from storage is still a valid layer); the inputs are never modified.

    :raises TypeError: an element is not a PIL image, or *layers* is a single image.
    :raises ValueError: the stack is empty, an image has a zero dimension, or the
        sizes differ (the message names the first offending layer and both sizes).
    """
    if isinstance(layers, Image.Image):
        # A lone image is iterable over nothing useful; catch the likely mistake early.
        raise TypeError("layers must be a sequence of PIL images, not a single image")
    stack = list(layers)
    if not stack:
        raise ValueError("layers must contain at least one image")
    for index, layer in enumerate(stack):
        if not isinstance(layer, Image.Image):
            raise TypeError(f"layer {index} is {type(layer).__name__}, expected a PIL image")
    width, height = stack[0].size
    if width <= 0 or height <= 0:
        raise ValueError(f"layer 0 has an empty size {width}x{height}")
    for index, layer in enumerate(stack[1:], start=1):
        if layer.size != (width, height):
            raise ValueError(
                f"all layers must have the same size: layer 0 is {width}x{height} "
                f"but layer {index} is {layer.size[0]}x{layer.size[1]}"
            )
    return [layer if layer.mode == "RGBA" else layer.convert("RGBA") for layer in stack]


def composite(layers: Sequence[Image.Image]) -> Image.Image:
    """Flatten *layers* (bottom first) with Porter-Duff "over" onto a transparent canvas.

    This is the authors' "combine" operation. Returns a new RGBA image of the layers'
    size; where every layer is transparent the result is (0, 0, 0, 0).

    :raises TypeError, ValueError: as :func:`validate_layers`.
    """
    stack = validate_layers(layers)
    # Start from a transparent canvas rather than from layer 0 so a single-layer stack
    # still goes through the same arithmetic (and we never hand back the caller's image).
    result = Image.new("RGBA", stack[0].size, (0, 0, 0, 0))
    for layer in stack:
        result = Image.alpha_composite(result, layer)
    return result


def png_bytes(image: Image.Image, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode *image* as a lossless PNG, keeping its mode (RGBA stays RGBA, colour under
    alpha 0 included). Pillow writes no timestamp, so equal images give equal bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def encode_layers(layers: Sequence[Image.Image]) -> list[bytes]:
    """PNG-encode every layer of a validated stack, bottom first."""
    return [png_bytes(layer) for layer in validate_layers(layers)]
