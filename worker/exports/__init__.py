"""Export a layer stack (PIL RGBA images, index 0 = bottom) as PSD, PPTX, ZIP and ORA.

Pure CPU code (Pillow, psd-tools, python-pptx, stdlib zip); it must never import torch,
because the CPU export workers and the API image do not ship it.

Conventions shared by every format:

* Stack order is bottom first everywhere; display names are "Layer 1" (bottom) ...
  "Layer N" (top), matching the model authors' PSD export.
* Per-layer files are ``layer_00.png`` ... (zero-padded, bottom first; see
  :func:`layer_filename`), like the job's ``layers/00.png`` object keys.
* All layers must have one size; a mismatch is a ValueError naming the layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from .archives import layer_filename, manifest_bytes, to_ora, to_zip
from .photoshop import layer_name, to_psd
from .raster import PNG_COMPRESS_LEVEL, composite, encode_layers, png_bytes, validate_layers
from .slides import slide_size_emu, to_pptx

__all__ = [
    "CONTENT_TYPES",
    "EXPORT_FORMATS",
    "FILE_EXTENSIONS",
    "PNG_COMPRESS_LEVEL",
    "build_exports",
    "composite",
    "encode_layers",
    "layer_filename",
    "layer_name",
    "manifest_bytes",
    "png_bytes",
    "slide_size_emu",
    "to_ora",
    "to_pptx",
    "to_psd",
    "to_zip",
    "validate_layers",
]

#: MIME type to store/serve each artefact with, keyed by format name (= file extension).
CONTENT_TYPES: dict[str, str] = {
    "png": "image/png",
    "json": "application/json",
    # The IANA-registered type (older tools also use "application/x-photoshop").
    "psd": "image/vnd.adobe.photoshop",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "zip": "application/zip",
    "ora": "image/openraster",
}

#: The formats :func:`build_exports` produces, in a stable order.
EXPORT_FORMATS: tuple[str, ...] = ("psd", "pptx", "zip", "ora")

#: File extension per format (the object key is ``exports/layers.<ext>``).
FILE_EXTENSIONS: dict[str, str] = {fmt: fmt for fmt in (*EXPORT_FORMATS, "png", "json")}


def build_exports(
    layers: Sequence[Image.Image],
    manifest: Mapping[str, Any],
    *,
    layer_pngs: Sequence[bytes] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
) -> dict[str, bytes]:
    """Build every export of one stack: ``{"psd": ..., "pptx": ..., "zip": ..., "ora": ...}``.

    Validates once, PNG-encodes each layer once (or reuses *layer_pngs*, e.g. the bytes
    already uploaded as ``layers/NN.png``) and shares the encodings between the PPTX,
    ZIP and ORA, and composites once for the ORA. *manifest* goes into the ZIP as
    ``manifest.json``. Serve each value with ``CONTENT_TYPES[key]``.

    :param formats: subset of :data:`EXPORT_FORMATS` to build (default: all).
    :raises TypeError, ValueError: as :func:`validate_layers`; ValueError for an
        unknown format or a *layer_pngs* of the wrong length; TypeError for a
        non-JSON manifest (checked before any other work when "zip" is requested).
    """
    unknown = [fmt for fmt in formats if fmt not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {list(EXPORT_FORMATS)}")
    stack = validate_layers(layers)
    if "zip" in formats:
        manifest_bytes(manifest)  # reject a bad manifest before the expensive parts
    needs_pngs = any(fmt in formats for fmt in ("pptx", "zip", "ora"))
    pngs = list(layer_pngs) if layer_pngs is not None else None
    if needs_pngs and pngs is None:
        pngs = encode_layers(stack)
    if pngs is not None and len(pngs) != len(stack):
        raise ValueError(f"got {len(pngs)} encoded PNGs for {len(stack)} layers")

    exports: dict[str, bytes] = {}
    for fmt in EXPORT_FORMATS:  # fixed order, whatever order *formats* came in
        if fmt not in formats:
            continue
        if fmt == "psd":
            exports[fmt] = to_psd(stack)
        elif fmt == "pptx":
            exports[fmt] = to_pptx(stack, layer_pngs=pngs)
        elif fmt == "zip":
            exports[fmt] = to_zip(stack, manifest, layer_pngs=pngs)
        else:
            exports[fmt] = to_ora(stack, layer_pngs=pngs)
    return exports
