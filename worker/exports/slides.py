"""PowerPoint (PPTX) export through python-pptx: one slide, one full-slide picture per layer."""

from __future__ import annotations

import functools
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


class _Capture:
    """The physical writer python-pptx's :class:`PackageWriter` drives, keeping each member
    as ``(name, blob, compression)`` in write order: stored for
    :data:`_STORED_CONTENT_TYPES`, deflated otherwise."""

    def __init__(self, stored: frozenset[str]):
        self.members: list[tuple[str, bytes, int]] = []
        self._stored = stored

    def write(self, pack_uri: PackURI, blob: bytes) -> None:
        method = zipfile.ZIP_STORED if pack_uri in self._stored else zipfile.ZIP_DEFLATED
        self.members.append((pack_uri.membername, blob, method))


_PRIVATE_API_OK = all(
    hasattr(PackageWriter, name) for name in ("_write_content_types_stream", "_write_pkg_rels", "_write_parts")
)


def _members(presentation: PptxDocument) -> list[tuple[str, bytes, int]] | None:
    """What ``presentation.save()`` writes (content types, package rels, then each part and
    its rels: the same members in the same order), as :class:`_Capture` members; None where
    python-pptx 1.0's internals (``Package._rels``, ``PackageWriter._write_*``) are missing."""
    package = presentation.part.package
    if not _PRIVATE_API_OK or not hasattr(package, "_rels"):  # pragma: no cover - another python-pptx
        return None
    parts = tuple(package.iter_parts())
    capture = _Capture(frozenset(part.partname for part in parts if part.content_type in _STORED_CONTENT_TYPES))
    writer = PackageWriter(io.BytesIO(), package._rels, parts)
    for write in (writer._write_content_types_stream, writer._write_pkg_rels, writer._write_parts):
        write(capture)  # type: ignore[arg-type]
    return capture.members


def _zip(members: Sequence[tuple[str, bytes, int]]) -> ByteSink:
    """The package file: fixed member timestamps, so equal inputs give equal files."""
    sink = ByteSink()
    with zipfile.ZipFile(sink, "w") as archive:
        for name, blob, method in members:
            archive.writestr(zip_member(name, method), blob)
    return sink


def _build(size: tuple[int, int], pngs: Sequence[bytes]) -> PptxDocument:
    """The deck through python-pptx: a blank slide of :func:`slide_size_emu`, one full-slide
    picture per PNG, bottom first, each named like its PSD layer."""
    cx, cy = slide_size_emu(*size)
    presentation = Presentation()
    presentation.slide_width = Emu(cx)
    presentation.slide_height = Emu(cy)
    slide = presentation.slides.add_slide(_blank_layout(presentation))
    for index, png in enumerate(pngs):
        picture = slide.shapes.add_picture(io.BytesIO(png), Emu(0), Emu(0), Emu(cx), Emu(cy))
        picture.name = layer_name(index)
    return presentation


def _placeholder_png(index: int) -> bytes:
    """A 1x1 PNG per picture slot, distinct so that python-pptx's de-duplication (by SHA-1)
    keeps one image part per picture."""
    buffer = io.BytesIO()
    Image.new("RGBA", (1, 1), (index % 256, index // 256, 0, 255)).save(buffer, "PNG")
    return buffer.getvalue()


#: Package members with the layer index in place of each picture's bytes.
Skeleton = tuple[tuple[str, "bytes | int", int], ...]


@functools.lru_cache(maxsize=64)
def _skeleton(size: tuple[int, int], count: int) -> Skeleton | None:
    """The deck for *count* layers of *size*, built once with placeholder pictures.

    Nothing of a picture's image reaches the XML (its size is given, its name is
    "image.png" for any stream), so every deck of one size and layer count differs only in
    the media members' bytes. python-pptx takes ~15 ms to build a 4-picture deck (XML parts,
    lazy properties, SHA-1 of each image); filling a cached skeleton takes ~3."""
    placeholders = [_placeholder_png(index) for index in range(count)]
    members = _members(_build(size, placeholders))
    if members is None:  # pragma: no cover - another python-pptx
        return None
    slots = {png: index for index, png in enumerate(placeholders)}
    skeleton = tuple((name, slots.get(blob, blob), method) for name, blob, method in members)
    if sorted(blob for _, blob, _ in skeleton if isinstance(blob, int)) != list(range(count)):
        return None  # pragma: no cover - a picture not written as its own part
    return skeleton


def to_pptx(layers: Sequence[Image.Image], *, layer_pngs: Sequence[bytes] | None = None) -> bytes:
    """:func:`pptx_sink`'s bytes."""
    return pptx_sink(layers, layer_pngs=layer_pngs).getvalue()


def pptx_sink(layers: Sequence[Image.Image], *, layer_pngs: Sequence[bytes] | None = None) -> ByteSink:
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
    skeleton = _skeleton(stack[0].size, len(pngs))
    if skeleton is not None:
        return _zip([(name, pngs[blob] if isinstance(blob, int) else blob, method) for name, blob, method in skeleton])
    presentation = _build(stack[0].size, pngs)  # pragma: no cover - another python-pptx
    members = _members(presentation)
    if members is not None:
        return _zip(members)
    sink = ByteSink()  # pragma: no cover - another python-pptx: same content, media deflated
    presentation.save(sink)
    return sink
