"""Layered Photoshop (PSD) export through psd-tools."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image
from psd_tools import PSDImage

from .raster import validate_layers


def layer_name(index: int) -> str:
    """Display name of the layer at stack position *index* (0 = bottom): "Layer 1", ...

    The authors' exports number from the bottom, so "Layer 1" is the backdrop."""
    return f"Layer {index + 1}"


def to_psd(layers: Sequence[Image.Image]) -> bytes:
    """Build an 8-bit RGBA PSD with one full-canvas pixel layer per input layer.

    Layers are named :func:`layer_name` bottom to top and keep their alpha as the
    layer transparency channel (no masks, opacity 255, normal blending). The merged
    image section holds the flattened stack *with* its transparency, so readers that
    only look at the merged image (previewers, ImageMagick's ``file.psd[0]``) show the
    same picture as :func:`~worker.exports.composite`, up to the 8-bit rounding of
    Photoshop's store-over-white convention for semi-transparent pixels.

    :raises TypeError, ValueError: as :func:`~worker.exports.validate_layers`.
    """
    stack = validate_layers(layers)
    document = PSDImage.new("RGBA", stack[0].size, color=0)
    # PSDImage.new() turns its fill colour into an opaque backdrop that save() would
    # composite the layers onto. Cleared, save() composites onto transparency and
    # stores the colour over white, as Photoshop does for a transparent document.
    document.background_color = None
    # A layered PSD only declares that the merged image's extra channel is its
    # transparency by storing a *negative* layer count (Photoshop's own convention,
    # which psd-tools and ImageMagick honour). psd-tools derives that sign from this
    # flag when it rebuilds the layer records; there is no public setter in 1.26, and
    # tests/test_exports.py checks that the saved file reads back with merged alpha.
    document._merged_alpha = True
    for index, layer in enumerate(stack):
        document.create_pixel_layer(layer, name=layer_name(index), top=0, left=0)
    buffer = io.BytesIO()
    # save() recomposites the merged image from the layers because the document is
    # marked updated; that is what makes the preview right.
    document.save(buffer)
    return buffer.getvalue()
