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

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from storage.base import Pieces

from .archives import layer_filename, manifest_bytes, to_ora, to_zip, zip_sink
from .photoshop import layer_info, layer_name, merged_planes, psd_sink, rle_plane, to_psd
from .raster import PNG_AUTO, PNG_COMPRESS_LEVEL, composite, encode_layers, png_bytes, validate_layers
from .sink import ByteSink
from .slides import pptx_sink, slide_size_emu, to_pptx

__all__ = [
    "CONTENT_TYPES",
    "EXPORT_FORMATS",
    "FILE_EXTENSIONS",
    "PNG_AUTO",
    "PNG_COMPRESS_LEVEL",
    "build_exports",
    "composite",
    "encode_all",
    "encode_layers",
    "layer_filename",
    "layer_name",
    "manifest_bytes",
    "merged_planes",
    "png_bytes",
    "rle_plane",
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


def _check_formats(formats: Sequence[str]) -> None:
    unknown = [fmt for fmt in formats if fmt not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {list(EXPORT_FORMATS)}")


def build_exports(
    layers: Sequence[Image.Image],
    manifest: Mapping[str, Any],
    *,
    layer_pngs: Sequence[bytes] | None = None,
    formats: Sequence[str] = EXPORT_FORMATS,
    merged: Image.Image | None = None,
) -> dict[str, bytes]:
    """Build every export of one stack: ``{"psd": ..., "pptx": ..., "zip": ..., "ora": ...}``.

    Validates once, PNG-encodes each layer once (or reuses *layer_pngs*, e.g. the bytes
    already uploaded as ``layers/NN.png``) and shares the encodings between the PPTX,
    ZIP and ORA, and composites once for the PSD and the ORA (or reuses *merged*).
    *manifest* goes into the ZIP as ``manifest.json``. Serve each value with
    ``CONTENT_TYPES[key]``. Sequential; :func:`encode_all` is the parallel version.

    :param formats: subset of :data:`EXPORT_FORMATS` to build (default: all).
    :param merged: the stack's :func:`composite`, if already computed.
    :raises TypeError, ValueError: as :func:`validate_layers`; ValueError for an
        unknown format or a *layer_pngs* of the wrong length; TypeError for a
        non-JSON manifest (checked before any other work when "zip" is requested).
    """
    _check_formats(formats)
    stack = validate_layers(layers)
    if "zip" in formats:
        manifest_bytes(manifest)  # reject a bad manifest before the expensive parts
    needs_pngs = any(fmt in formats for fmt in ("pptx", "zip", "ora"))
    pngs = list(layer_pngs) if layer_pngs is not None else None
    if needs_pngs and pngs is None:
        pngs = encode_layers(stack)
    if pngs is not None and len(pngs) != len(stack):
        raise ValueError(f"got {len(pngs)} encoded PNGs for {len(stack)} layers")
    if merged is None and any(fmt in formats for fmt in ("psd", "ora")):
        merged = composite(stack)

    exports: dict[str, bytes] = {}
    for fmt in EXPORT_FORMATS:  # fixed order, whatever order *formats* came in
        if fmt not in formats:
            continue
        if fmt == "psd":
            exports[fmt] = to_psd(stack, merged=merged)
        elif fmt == "pptx":
            exports[fmt] = to_pptx(stack, layer_pngs=pngs)
        elif fmt == "zip":
            exports[fmt] = to_zip(stack, manifest, layer_pngs=pngs)
        else:
            exports[fmt] = to_ora(stack, layer_pngs=pngs, merged=merged)
    return exports


#: Threads :func:`encode_all` starts when not given a pool: one per CPU this process may
#: use, 2 to 8. The work is part GIL-free (zlib, CRC, SHA-1, numpy, PIL resize) and part
#: GIL-bound (PIL alpha_composite, psd-tools' RLE codec, python-pptx, zipfile); on 2 cores
#: 2, 3 and 4 threads measured the same within noise (bench/exports_speed.py).
ENCODE_THREADS = max(2, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2))

_T = TypeVar("_T")


def encode_all(
    layers: Sequence[Image.Image],
    manifest: Mapping[str, Any],
    formats: Sequence[str] = EXPORT_FORMATS,
    *,
    pool: Executor | None = None,
    on_ready: Callable[[str, bytes | Pieces], None] | None = None,
    pieces: bool = False,
) -> tuple[list[bytes], bytes, dict[str, bytes | Pieces]]:
    """Everything a job stores for one stack, encoded in parallel:
    ``(layer_pngs, composite_png, exports)``.

    *layer_pngs* are :func:`png_bytes` of each layer (bottom first), *composite_png*
    :func:`png_bytes` of :func:`composite`, *exports* is ``{fmt: bytes}`` for *formats*
    in :data:`EXPORT_FORMATS` order, as :func:`build_exports` returns. Each piece of
    work is done once and shared: the layer PNGs go into the PPTX, ZIP and ORA, the
    composite into the PSD's merged image and the ORA's thumbnail, and the composite
    PNG is the ORA's ``mergedimage.png``.

    :param pool: a :class:`~concurrent.futures.ThreadPoolExecutor` to run on (default:
        a private one of :data:`ENCODE_THREADS` threads). Tasks block on tasks
        submitted before them, so any thread pool size works (FIFO dispatch), but a
        process pool does not.
    :param on_ready: called as each piece is done, with ``"layer:<i>"``, ``"composite"`` or
        the format name, so a caller can start storing it while the rest is encoded. It runs
        on the pool's thread: keep it short (hand the bytes to another executor).
    :param pieces: hand over (and return) the PSD, PPTX and ZIP as
        :class:`~storage.base.Pieces` instead of bytes: what an object store writes without
        joining ~20 MB per 4-layer 640x640 job first (see ``Pieces``).
    :raises TypeError, ValueError: as :func:`build_exports`, before any work starts.
    """
    _check_formats(formats)
    stack = validate_layers(layers)
    if "zip" in formats:
        manifest_bytes(manifest)
    if pool is None:
        with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="exports") as own:
            return encode_all(stack, manifest, formats, pool=own, on_ready=on_ready, pieces=pieces)
    for layer in stack:
        layer.load()  # a lazily read image must not be loaded by several threads at once

    def submit(fn: Callable[[], _T]) -> Future[_T]:
        return pool.submit(fn)

    def finish(sink: ByteSink) -> bytes | Pieces:
        return sink.pieces() if pieces else sink.getvalue()

    # Submission order is the schedule (the pool runs tasks first come, first served,
    # and a task only ever waits on earlier ones). The composite comes first since the
    # composite PNG, the PSD and the ORA hang off it; then each layer's array and PNG (the
    # PSD reuses the arrays); then the PSD's layer section, which needs no composite, so it
    # is built while the composite is; then the rest of the PSD.
    # Each image is turned into an array once (a copy, GIL held) and shared by its PNG and
    # the PSD: 6 conversions a 4-layer job instead of 11.
    def flatten() -> tuple[Image.Image, np.ndarray]:
        image = composite(stack)
        return image, np.asarray(image)

    flat = submit(flatten)
    layer_pixels = [submit(lambda layer=layer: np.asarray(layer)) for layer in stack]
    layer_futures = [
        submit(lambda layer=layer, pixels=pixels: png_bytes(layer, pixels=pixels.result()))
        for layer, pixels in zip(stack, layer_pixels, strict=True)
    ]
    psd = None
    if "psd" in formats:
        psd_layers = submit(lambda: layer_info(stack, [pixels.result() for pixels in layer_pixels]))
        psd = submit(lambda: finish(psd_sink(
            stack, merged=flat.result()[0], merged_pixels=flat.result()[1], layers_section=psd_layers.result(),
        )))
    composite_png = submit(lambda: png_bytes(flat.result()[0], pixels=flat.result()[1]))

    def pngs() -> list[bytes]:
        return [future.result() for future in layer_futures]

    builders: dict[str, Callable[[], bytes | Pieces]] = {
        "pptx": lambda: finish(pptx_sink(stack, layer_pngs=pngs())),
        "zip": lambda: finish(zip_sink(stack, manifest, layer_pngs=pngs())),
        "ora": lambda: to_ora(
            stack, layer_pngs=pngs(), merged=flat.result()[0], merged_png=composite_png.result()
        ),
    }
    others = {fmt: submit(builders[fmt]) for fmt in EXPORT_FORMATS if fmt in formats and fmt != "psd"}
    if on_ready is not None:
        named = [(f"layer:{i}", f) for i, f in enumerate(layer_futures)] + [("composite", composite_png)]
        named += ([("psd", psd)] if psd is not None else []) + list(others.items())
        for name, future in named:
            future.add_done_callback(
                lambda f, name=name: on_ready(name, f.result()) if f.exception() is None else None
            )
    exports: dict[str, bytes | Pieces] = {}
    for fmt in EXPORT_FORMATS:
        if fmt == "psd" and psd is not None:
            exports[fmt] = psd.result()
        elif fmt in others:
            exports[fmt] = others[fmt].result()
    return pngs(), composite_png.result(), exports
