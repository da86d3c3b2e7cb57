"""PowerPoint (PPTX) export through python-pptx: one slide, one full-slide picture per layer."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

from PIL import Image
from pptx import Presentation
from pptx.opc.packuri import PackURI
from pptx.opc.serialized import PackageWriter
from pptx.presentation import Presentation as PptxDocument
from pptx.slide import SlideLayout
from pptx.util import Emu

from .archives import zip_member
from .photoshop import layer_name
from .raster import checked_pngs, validate_layers
from .sink import ByteSink

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


# Parts whose bytes are already compressed: stored, not deflated again. python-pptx's own
# writer deflates every part at zlib's default level, which for noise-like 640x640
# layers spent ~25 ms a picture to gain nothing.
_STORED_CONTENT_TYPES = frozenset({"image/png", "image/jpeg", "image/gif"})


class _ZipWriter:
    """The physical writer python-pptx's :class:`PackageWriter` drives, with per-member
    compression (stored for :data:`_STORED_CONTENT_TYPES`, deflated otherwise) and
    fixed member timestamps, so equal inputs give equal files."""

    def __init__(self, file: ByteSink, stored: frozenset[str]):
        self._zip = zipfile.ZipFile(file, "w")
        self._stored = stored

    def __enter__(self) -> _ZipWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()

    def write(self, pack_uri: PackURI, blob: bytes) -> None:
        method = zipfile.ZIP_STORED if pack_uri in self._stored else zipfile.ZIP_DEFLATED
        self._zip.writestr(zip_member(pack_uri.membername, method), blob)


_PRIVATE_API_OK = all(
    hasattr(PackageWriter, name)
    for name in ("_write", "_write_content_types_stream", "_write_pkg_rels", "_write_parts")
)


class _PackageWriter(PackageWriter):
    """python-pptx's package writer (content types, package rels, then each part and its
    rels: the same members in the same order) over :class:`_ZipWriter`."""

    def _write(self) -> None:
        stored = frozenset(
            part.partname for part in self._parts if part.content_type in _STORED_CONTENT_TYPES
        )
        with _ZipWriter(self._pkg_file, stored) as phys_writer:  # type: ignore[arg-type]
            self._write_content_types_stream(phys_writer)  # type: ignore[arg-type]
            self._write_pkg_rels(phys_writer)  # type: ignore[arg-type]
            self._write_parts(phys_writer)  # type: ignore[arg-type]


def _save(presentation: PptxDocument) -> bytes:
    """``presentation.save()`` to bytes, through :class:`_PackageWriter`.

    Relies on python-pptx 1.0 internals (``Package._rels``, ``PackageWriter._write_*``);
    where they are missing it falls back to ``presentation.save()`` (same content, media
    deflated). The PPTX tests reopen the result and check the member compression."""
    package = presentation.part.package
    buffer: ByteSink | io.BytesIO = ByteSink()
    if _PRIVATE_API_OK and hasattr(package, "_rels"):
        _PackageWriter.write(buffer, package._rels, tuple(package.iter_parts()))  # type: ignore[arg-type]
    else:  # pragma: no cover - another python-pptx
        buffer = io.BytesIO()
        presentation.save(buffer)
    return buffer.getvalue()


def to_pptx(layers: Sequence[Image.Image], *, layer_pngs: Sequence[bytes] | None = None) -> bytes:
    """Build a one-slide PPTX where each layer is a full-slide PNG picture (alpha kept).

    Slide size is :func:`slide_size_emu` of the layer size. Pictures are added bottom
    first, so the slide's z-order (later shape = on top) matches the stack, and each is
    named like its PSD layer ("Layer 1" = bottom). Each picture's image part is the
    layer's PNG byte for byte, stored uncompressed in the package (PNG is already
    deflated); XML parts are deflated and member timestamps fixed.

    :param layer_pngs: the layers already PNG-encoded (bottom first), to skip
        re-encoding when several exports are built; must match *layers*.
    :raises TypeError, ValueError: as :func:`~worker.exports.validate_layers`, or a
        ValueError when *layer_pngs* has the wrong length.
    """
    stack = validate_layers(layers)
    pngs = checked_pngs(stack, layer_pngs)
    cx, cy = slide_size_emu(*stack[0].size)
    presentation = Presentation()
    presentation.slide_width = Emu(cx)
    presentation.slide_height = Emu(cy)
    slide = presentation.slides.add_slide(_blank_layout(presentation))
    for index, png in enumerate(pngs):
        picture = slide.shapes.add_picture(io.BytesIO(png), Emu(0), Emu(0), Emu(cx), Emu(cy))
        picture.name = layer_name(index)
    return _save(presentation)
