"""PowerPoint (PPTX) export through python-pptx: one slide, one full-slide picture per layer."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image
from pptx import Presentation
from pptx.presentation import Presentation as PptxDocument
from pptx.slide import SlideLayout
from pptx.util import Emu

from .photoshop import layer_name
from .raster import encode_layers, validate_layers

EMU_PER_INCH = 914_400
SLIDE_DPI = 96
EMU_PER_PIXEL = EMU_PER_INCH // SLIDE_DPI  # 9525, exact
# OOXML's ST_SlideSizeCoordinate allows 1-56 inches per side; python-pptx enforces it
# (ValueError) and PowerPoint rejects files outside it.
MIN_SLIDE_EMU = 914_400
MAX_SLIDE_EMU = 51_206_400


def slide_size_emu(width: int, height: int) -> tuple[int, int]:
    """Slide size in EMU for a *width* x *height* pixel image.

    The image at 96 dpi (EMU = px * 914400 / 96), as the authors' export does, whenever
    both sides land in the 1-56 inch range PowerPoint accepts (96-5376 px). Outside it
    the size is scaled uniformly into range (aspect ratio kept); only an aspect ratio
    beyond 56:1 also needs per-side clamping.
    """
    cx, cy = width * EMU_PER_PIXEL, height * EMU_PER_PIXEL
    scale = 1.0
    if max(cx, cy) > MAX_SLIDE_EMU:
        scale = MAX_SLIDE_EMU / max(cx, cy)
    if min(cx, cy) * scale < MIN_SLIDE_EMU:
        scale = MIN_SLIDE_EMU / min(cx, cy)
    if scale == 1.0:
        return cx, cy

    def fit(value: int) -> int:
        return min(MAX_SLIDE_EMU, max(MIN_SLIDE_EMU, round(value * scale)))

    return fit(cx), fit(cy)


def _blank_layout(presentation: PptxDocument) -> SlideLayout:
    """The default template's "Blank" layout (index 6), looked up by name first so a
    reordered template still gives a slide with no placeholders."""
    for layout in presentation.slide_layouts:
        if layout.name == "Blank":
            return layout
    return presentation.slide_layouts[6]


def to_pptx(layers: Sequence[Image.Image], *, layer_pngs: Sequence[bytes] | None = None) -> bytes:
    """Build a one-slide PPTX where each layer is a full-slide PNG picture (alpha kept).

    Slide size is :func:`slide_size_emu` of the layer size. Pictures are added bottom
    first, so the slide's z-order (later shape = on top) matches the stack, and each is
    named like its PSD layer ("Layer 1" = bottom). Each picture's image part is the
    layer's PNG byte for byte.

    :param layer_pngs: the layers already PNG-encoded (bottom first), to skip
        re-encoding when several exports are built; must match *layers*.
    :raises TypeError, ValueError: as :func:`~worker.exports.validate_layers`, or a
        ValueError when *layer_pngs* has the wrong length.
    """
    stack = validate_layers(layers)
    pngs = list(layer_pngs) if layer_pngs is not None else encode_layers(stack)
    if len(pngs) != len(stack):
        raise ValueError(f"got {len(pngs)} encoded PNGs for {len(stack)} layers")
    cx, cy = slide_size_emu(*stack[0].size)
    presentation = Presentation()
    presentation.slide_width = Emu(cx)
    presentation.slide_height = Emu(cy)
    slide = presentation.slides.add_slide(_blank_layout(presentation))
    for index, png in enumerate(pngs):
        picture = slide.shapes.add_picture(io.BytesIO(png), Emu(0), Emu(0), Emu(cx), Emu(cy))
        picture.name = layer_name(index)
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()
