"""Pixel-level helpers shared by every export: validation, compositing, PNG encoding."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np

try:  # ISA-L's deflate: same format as zlib, an order of magnitude faster
    from isal import isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib stays as the fallback
    isal_zlib = None
from PIL import Image

#: ``compress_level`` value asking :func:`png_bytes` to pick the zlib settings from the
#: content (the default). Any int 0-9 forces that zlib level instead.
PNG_AUTO = None

# Kept for callers that want the old fixed level (``png_bytes(img, PNG_COMPRESS_LEVEL)``);
# it is no longer the default, see :func:`png_bytes`.
PNG_COMPRESS_LEVEL = 4

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PIL mode -> PNG colour type, for the modes written here (8 bits per sample).
_PNG_COLOR_TYPES = {"L": 0, "RGB": 2, "LA": 4, "RGBA": 6}
# Image.info keys Pillow's PNG writer turns into chunks: leave such images to Pillow.
_PILLOW_INFO_KEYS = ("icc_profile", "transparency", "default_image")
# Automatic mode: a sample of the filtered rows (_SAMPLE_BANDS bands of _SAMPLE_ROWS rows,
# spread over the image) is deflated both ways; content that saves less than
# 1 - _STORE_RATIO is stored instead (deflating noise costs ~20 ms a 640x640 layer
# for nothing).
_SAMPLE_BANDS = 4
_SAMPLE_ROWS = 4
_STORE_RATIO = 0.95
_STORED_BLOCK = 0xFFFF  # the most a stored deflate block holds
# The same checksums as zlib's, several times faster through ISA-L where it is installed.
_crc32 = isal_zlib.crc32 if isal_zlib is not None else zlib.crc32
_adler32 = isal_zlib.adler32 if isal_zlib is not None else zlib.adler32


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
    # Pillow's "over" onto a transparent canvas gives the layer itself, except that fully
    # transparent pixels become (0, 0, 0, 0) (checked for every colour and alpha value in
    # tests/test_exports.py). So the bottom layer is taken as is, with that one change, in
    # numpy (GIL-free) instead of a first alpha_composite pass, which holds the GIL for
    # ~2.5 ms at 640x640 while the export threads wait. Always a new image.
    bottom = np.asarray(stack[0])
    result = Image.fromarray(bottom * (bottom[..., 3:] != 0), "RGBA")
    for layer in stack[1:]:
        result = Image.alpha_composite(result, layer)
    return result


def _png_chunk(kind: bytes, *pieces: bytes | memoryview) -> list[bytes | memoryview]:
    """One PNG chunk as pieces for a single final join (so a big IDAT is copied once)."""
    crc = _crc32(kind)
    for piece in pieces:
        crc = _crc32(piece, crc)
    length = sum(len(piece) for piece in pieces)
    return [struct.pack(">I", length), kind, *pieces, struct.pack(">I", crc)]


def _stored_zlib(data: memoryview) -> list[bytes | memoryview]:
    """A zlib stream of *data* in stored (uncompressed) deflate blocks, as pieces that
    reference *data* instead of copying it: what ``zlib.compress(data, 0)`` returns,
    less one copy of the whole image."""
    pieces: list[bytes | memoryview] = [b"\x78\x01"]  # deflate, 32 KiB window, level 0
    size = len(data)
    for start in range(0, size, _STORED_BLOCK):
        block = data[start:start + _STORED_BLOCK]
        final = start + _STORED_BLOCK >= size
        pieces.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF))
        pieces.append(block)
    pieces.append(struct.pack(">I", _adler32(data)))
    return pieces


def _up_filtered(pixels: np.ndarray) -> np.ndarray:
    """PNG scanlines with filter type 2 ("Up") on every row: each byte minus the byte
    above it, mod 256 (the row above the first counts as zeros). One vectorised
    subtraction, where Pillow tries all five filters on every row in C (~4x slower);
    on layer-like content "Up" alone deflates about as well as Pillow's choice."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    out = np.empty((height, rows.shape[1] + 1), np.uint8)
    out[:, 0] = 2
    out[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


def _deflate(data: memoryview | bytes, level: int, strategy: int = zlib.Z_DEFAULT_STRATEGY) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    return compressor.compress(data) + compressor.flush()


def _auto_deflate(scanlines: np.ndarray) -> list[bytes | memoryview]:
    """With ISA-L (the `isal` package) a layer is deflated at its level 1: a standard zlib
    stream, about as small as zlib's level 1, made ~10x faster than zlib's fastest (2 ms against
    27 ms for a grainy 640x640 RGBA layer); unless a sample of its rows shows it incompressible
    (noise, what the random-weight test model gives), which is stored: the same size, for
    ~0.3 ms instead of ~2. Without ISA-L, :func:`_zlib_auto_deflate` picks the zlib mode from a
    sample.
    """
    if isal_zlib is None:
        return _zlib_auto_deflate(scanlines)
    sample = scanlines[sample_rows(scanlines.shape[0])]
    if len(isal_zlib.compress(sample.data, 1)) > _STORE_RATIO * sample.nbytes:
        return _stored_zlib(scanlines.data.cast("B"))
    return [isal_zlib.compress(scanlines.data, 1)]


def _zlib_auto_deflate(scanlines: np.ndarray) -> list[bytes | memoryview]:
    """Deflate *scanlines* the cheapest way that is not much bigger than the better of
    zlib level 1 and Huffman-only, judged on a sample of rows:

    * flat art (large transparent or uniform regions): level 1, the fastest matcher,
      which shrinks such layers 30-100x;
    * grainy/photographic content, where LZ matching finds little: Huffman-only,
      ~3x faster than level 1 there and no bigger (often smaller);
    * noise (random-weight model output), where Huffman-only saves under 5 %: stored,
      ~20x faster than level 1 for the same size. Level 1 is not tried then: beating
      an order-0 coder by LZ alone needs exact repeats that are not row-aligned (the
      "Up" filter already zeroes row-aligned ones), which generated layers lack.
    """
    sample = scanlines[sample_rows(scanlines.shape[0])]
    huffman = len(_deflate(sample.data, 1, zlib.Z_HUFFMAN_ONLY))
    if huffman > _STORE_RATIO * sample.nbytes:
        return _stored_zlib(scanlines.data.cast("B"))
    if huffman < len(_deflate(sample.data, 1)):
        return [_deflate(scanlines.data, 1, zlib.Z_HUFFMAN_ONLY)]
    return [_deflate(scanlines.data, 1)]


def sample_rows(height: int) -> np.ndarray | slice:
    """The rows compression choices look at (PNG deflate mode, PSD RLE or RAW): _SAMPLE_BANDS
    bands of _SAMPLE_ROWS rows spread over the image, or every row of a short one."""
    if height <= _SAMPLE_BANDS * _SAMPLE_ROWS:
        return slice(None)
    starts = np.linspace(0, height - _SAMPLE_ROWS, _SAMPLE_BANDS).astype(int)
    return (starts[:, None] + np.arange(_SAMPLE_ROWS)).ravel()


def png_bytes(
    image: Image.Image, compress_level: int | None = PNG_AUTO, *, pixels: np.ndarray | None = None
) -> bytes:
    """Encode *image* as a lossless PNG, keeping its mode (RGBA stays RGBA, colour under
    alpha 0 included). No timestamp or other metadata, so equal images give equal bytes.

    8-bit L, LA, RGB and RGBA images (every layer and composite) are written here:
    "Up"-filtered rows in one IDAT chunk, deflated as :func:`_auto_deflate` picks, or
    at zlib level *compress_level* when given. Any PNG decoder reads them back to the
    same pixels. Measured on 640x640 RGBA layers (bench/exports_speed.py, one core):
    ~2.3 ms a poster layer, ~7.5 ms a grainy photo cut-out, ~2 ms noise, against ~6,
    ~40 and ~50 ms through Pillow at level 4 (Pillow tries all five PNG filters on
    every row, in C, which alone costs more than this whole function). Files come out
    3-4x bigger on flat art (tens of KiB a layer), ~10 % bigger on photo cut-outs and
    the same size on noise. Other modes, and images whose ``info`` carries something
    Pillow would write (ICC profile, transparency key), go through Pillow
    (``compress_level`` 4 unless given).

    :param pixels: ``np.asarray(image)``, if the caller already has it (each conversion is
        a copy of the image, ~0.7 ms at 640x640 with the GIL held).
    """
    color_type = _PNG_COLOR_TYPES.get(image.mode)
    if color_type is None or any(key in image.info for key in _PILLOW_INFO_KEYS):
        buffer = io.BytesIO()
        level = PNG_COMPRESS_LEVEL if compress_level is None else compress_level
        image.save(buffer, format="PNG", compress_level=level)
        return buffer.getvalue()
    width, height = image.size
    scanlines = _up_filtered(np.asarray(image) if pixels is None else pixels)
    if compress_level is None:
        idat = _auto_deflate(scanlines)
    else:
        idat = [_deflate(scanlines.data, compress_level)]
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"".join(
        [_PNG_SIGNATURE, *_png_chunk(b"IHDR", header), *_png_chunk(b"IDAT", *idat), *_png_chunk(b"IEND")]
    )


def encode_layers(layers: Sequence[Image.Image]) -> list[bytes]:
    """PNG-encode every layer of a validated stack, bottom first."""
    return [png_bytes(layer) for layer in validate_layers(layers)]


def checked_pngs(stack: list[Image.Image], layer_pngs: Sequence[bytes] | None) -> list[bytes]:
    """The stack's PNGs: *layer_pngs* when given (one per layer), else encoded now."""
    pngs = list(layer_pngs) if layer_pngs is not None else encode_layers(stack)
    if len(pngs) != len(stack):
        raise ValueError(f"got {len(pngs)} encoded PNGs for {len(stack)} layers")
    return pngs


def checked_merged(stack: list[Image.Image], merged: Image.Image | None) -> Image.Image:
    """The stack's composite: *merged* when given (it must be the layers' size), else composited now."""
    flat = merged if merged is not None else composite(stack)
    if flat.size != stack[0].size:
        raise ValueError(f"merged image is {flat.size[0]}x{flat.size[1]}, layers are "
                         f"{stack[0].size[0]}x{stack[0].size[1]}")
    return flat
