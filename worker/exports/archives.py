"""ZIP and OpenRaster exports: deterministic archives of per-layer PNGs."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any
from xml.etree import ElementTree

from PIL import Image

from .photoshop import layer_name
from .raster import checked_merged, checked_pngs, png_bytes, validate_layers
from .sink import ByteSink

# Fixed member timestamp (ZIP's epoch) so equal inputs give byte-identical archives:
# exports can then be compared, cached and deduplicated by hash.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
ORA_MIMETYPE = "image/openraster"
ORA_SPEC_VERSION = "0.0.5"  # the current (draft) OpenRaster specification
ORA_THUMBNAIL_MAX = 256  # the OpenRaster spec caps thumbnails at 256x256


def layer_filename(index: int, count: int) -> str:
    """ZIP member name of layer *index* (0 = bottom) in a stack of *count*.

    Zero-padded to at least two digits (``layer_00.png``), like the job's
    ``layers/00.png`` keys, so a plain name sort gives the stack order bottom first.
    (The authors' export wrote ``layer_{i}.png``, which sorts 10 before 2.)
    """
    width = max(2, len(str(count - 1)))
    return f"layer_{index:0{width}d}.png"


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """Serialise *manifest* as UTF-8 JSON with sorted keys (deterministic), newline-terminated.

    :raises TypeError: a value is not JSON-serialisable.
    """
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False)
    return (text + "\n").encode("utf-8")


def zip_member(name: str, compress_type: int) -> zipfile.ZipInfo:
    """A ZIP member header with fixed timestamp and attributes (shared with the PPTX)."""
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = compress_type
    # Pin what ZipInfo otherwise takes from the host (create_system) or leaves at 0
    # (permissions), so the archive bytes do not depend on where it was built.
    info.create_system = 3  # Unix
    info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
    return info


def to_zip(
    layers: Sequence[Image.Image],
    manifest: Mapping[str, Any],
    *,
    layer_pngs: Sequence[bytes] | None = None,
) -> bytes:
    """:func:`zip_sink`'s bytes."""
    return zip_sink(layers, manifest, layer_pngs=layer_pngs).getvalue()


def zip_sink(
    layers: Sequence[Image.Image],
    manifest: Mapping[str, Any],
    *,
    layer_pngs: Sequence[bytes] | None = None,
) -> ByteSink:
    """Build a ZIP of the layers as :func:`layer_filename` PNGs plus ``manifest.json``.

    PNGs are stored (they are already deflated; recompressing wastes time for ~0 gain),
    the manifest is deflated. Timestamps and attributes are fixed, so the same layers
    and manifest always give the same bytes.

    :param layer_pngs: the layers already PNG-encoded (bottom first); must match *layers*.
    :raises TypeError, ValueError: as :func:`~worker.exports.validate_layers`; ValueError
        when *layer_pngs* has the wrong length; TypeError for a non-JSON manifest.
    """
    stack = validate_layers(layers)
    pngs = checked_pngs(stack, layer_pngs)
    manifest_json = manifest_bytes(manifest)  # fail before building anything
    buffer = ByteSink()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, png in enumerate(pngs):
            archive.writestr(zip_member(layer_filename(index, len(pngs)), zipfile.ZIP_STORED), png)
        archive.writestr(zip_member("manifest.json", zipfile.ZIP_DEFLATED), manifest_json)
    return buffer


def _stack_xml(width: int, height: int, sources: list[str]) -> bytes:
    image = ElementTree.Element("image", {"version": ORA_SPEC_VERSION, "w": str(width), "h": str(height)})
    stack = ElementTree.SubElement(image, "stack")
    # OpenRaster lists the *topmost* layer first, the reverse of our bottom-first order.
    for index in reversed(range(len(sources))):
        ora_layer(stack, layer_name(index), sources[index])
    return ElementTree.tostring(image, encoding="UTF-8", xml_declaration=True)


def ora_layer(stack: ElementTree.Element, name: str, src: str) -> ElementTree.Element:
    """Append one full-canvas, visible, opaque, normally blended ``<layer>`` to an ORA ``<stack>``."""
    return ElementTree.SubElement(
        stack,
        "layer",
        {
            "name": name,
            "src": src,
            "x": "0",
            "y": "0",
            "opacity": "1.000",
            "visibility": "visible",
            "composite-op": "svg:src-over",
        },
    )


def to_ora(
    layers: Sequence[Image.Image],
    *,
    layer_pngs: Sequence[bytes] | None = None,
    merged: Image.Image | None = None,
    merged_png: bytes | None = None,
    stack_xml: bytes | None = None,
) -> bytes:
    """Build an OpenRaster (.ora) file, which GIMP, Krita and MyPaint open as layers.

    Layout per the spec: ``mimetype`` first and stored (so ``file`` magic works),
    ``stack.xml`` (top layer first, names as in the PSD), ``data/layer_NN.png``,
    ``mergedimage.png`` (the full composite) and ``Thumbnails/thumbnail.png``
    (composite fitted in 256x256). Deterministic like :func:`to_zip`.

    :param layer_pngs: the layers already PNG-encoded (bottom first); must match *layers*.
    :param merged: the stack's :func:`~worker.exports.composite`, if already computed.
    :param merged_png: ``png_bytes(merged)``, if already encoded (the job's composite
        PNG); stored as ``mergedimage.png`` instead of encoding the composite again.
    :param stack_xml: a ``stack.xml`` to store instead of the flat one (a decomposition tree's
        nested stacks, see :mod:`worker.layersets.tree`); its ``src`` attributes must name the
        ``data/`` members written here.
    :raises TypeError, ValueError: as :func:`to_zip`.
    """
    stack = validate_layers(layers)
    pngs = checked_pngs(stack, layer_pngs)
    flat = checked_merged(stack, merged)
    thumbnail = flat.copy()
    thumbnail.thumbnail((ORA_THUMBNAIL_MAX, ORA_THUMBNAIL_MAX))
    sources = [f"data/{layer_filename(i, len(pngs))}" for i in range(len(pngs))]
    width, height = stack[0].size
    buffer = ByteSink()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zip_member("mimetype", zipfile.ZIP_STORED), ORA_MIMETYPE.encode("ascii"))
        archive.writestr(
            zip_member("stack.xml", zipfile.ZIP_DEFLATED),
            stack_xml if stack_xml is not None else _stack_xml(width, height, sources),
        )
        for source, png in zip(sources, pngs, strict=True):
            archive.writestr(zip_member(source, zipfile.ZIP_STORED), png)
        archive.writestr(
            zip_member("mergedimage.png", zipfile.ZIP_STORED),
            merged_png if merged_png is not None else png_bytes(flat),
        )
        archive.writestr(
            zip_member("Thumbnails/thumbnail.png", zipfile.ZIP_STORED), png_bytes(thumbnail)
        )
    return buffer.getvalue()
