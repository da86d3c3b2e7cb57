"""Unit tests for worker.exports: composite, PNG, PSD, PPTX, ZIP and OpenRaster exports.

Every export is checked by reopening it with an independent reader (psd-tools' parser,
python-pptx, zipfile + Pillow), and the composite against an 8-bit Porter-Duff "over"
written here in numpy rather than against Pillow itself.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image
from pptx import Presentation
from psd_tools import PSDImage
from psd_tools.compression import decode_rle, encode_rle

from worker.exports import (
    CONTENT_TYPES,
    EXPORT_FORMATS,
    build_exports,
    composite,
    encode_all,
    encode_layers,
    layer_filename,
    merged_planes,
    png_bytes,
    rle_plane,
    slide_size_emu,
    to_ora,
    to_pptx,
    to_psd,
    to_zip,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = {"job_id": "j-123", "layers": 3, "seed": 777, "note": "ünïcode ok"}


# --------------------------------------------------------------------------- helpers


def make_layer(rng: np.random.Generator, width: int, height: int, shapes: int = 4) -> Image.Image:
    """A synthetic RGBA layer: a few random ellipses and rectangles with random colours
    and partial opacity (one with an alpha gradient), arbitrary colour under alpha 0
    (exports must keep it: it is real data an editor can reveal)."""
    yy, xx = np.mgrid[0:height, 0:width]
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 0
    for shape in range(shapes):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(3, width / 2), rng.uniform(3, height / 2)
        if shape % 2:
            mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        rgba[mask, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
        if shape == 0:  # horizontal alpha ramp, covers every alpha level
            rgba[mask, 3] = (xx[mask] * 255 // max(width - 1, 1)).astype(np.uint8)
        else:
            rgba[mask, 3] = rng.integers(1, 256, dtype=np.uint8)
    return Image.fromarray(rgba, "RGBA")


def make_layers(count: int, width: int = 64, height: int = 40, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [make_layer(rng, width, height) for _ in range(count)]


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGBA", image.mode
    return np.asarray(image, dtype=np.uint8)


def over_8bit_reference(layers: list[Image.Image]) -> np.ndarray:
    """Porter-Duff source-over in float on straight (unpremultiplied) RGBA, rounded back
    to 8 bits after each layer as any 8-bit RGBA pipeline stores its intermediate."""
    height, width = pixels(layers[0]).shape[:2]
    dst = np.zeros((height, width, 4))
    for layer in layers:
        src = pixels(layer) / 255.0
        src_a, dst_a = src[..., 3:], dst[..., 3:] / 255.0
        out_a = src_a + dst_a * (1 - src_a)
        premul = src[..., :3] * src_a + dst[..., :3] / 255.0 * dst_a * (1 - src_a)
        out_c = np.where(out_a > 0, premul / np.maximum(out_a, 1e-12), 0.0)
        dst = np.rint(np.concatenate([out_c, out_a], axis=-1) * 255)
    return dst


def premultiplied(rgba: np.ndarray) -> np.ndarray:
    rgba = rgba.astype(float)
    return np.concatenate([rgba[..., :3] * rgba[..., 3:] / 255.0, rgba[..., 3:]], axis=-1)


def open_zip(data: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(data))
    assert archive.testzip() is None
    return archive


# --------------------------------------------------------------------------- composite / PNG


@pytest.mark.parametrize(("count", "size"), [(1, (64, 40)), (3, (64, 40)), (6, (37, 91))])
def test_composite_matches_independent_8bit_over(count: int, size: tuple[int, int]) -> None:
    layers = make_layers(count, *size, seed=count)
    result = composite(layers)
    assert result.mode == "RGBA" and result.size == size
    diff = np.abs(pixels(result).astype(int) - over_8bit_reference(layers))
    assert diff.max() <= 1  # within one LSB per channel


def test_composite_of_two_layers_matches_exact_float_over() -> None:
    bottom, top = make_layers(2, 50, 30, seed=7)
    b, t = pixels(bottom) / 255.0, pixels(top) / 255.0
    out_a = t[..., 3:] + b[..., 3:] * (1 - t[..., 3:])
    premul = t[..., :3] * t[..., 3:] + b[..., :3] * b[..., 3:] * (1 - t[..., 3:])
    expected = np.concatenate([premul, out_a], axis=-1) * 255  # premultiplied, unrounded
    got = premultiplied(pixels(composite([bottom, top])))
    assert np.abs(got - expected).max() <= 1.0


def test_composite_does_not_touch_inputs_and_single_layer_roundtrips() -> None:
    (layer,) = make_layers(1)
    before = pixels(layer).copy()
    result = composite([layer])
    assert result is not layer
    assert np.array_equal(pixels(layer), before)
    visible = before[..., 3] > 0
    assert np.array_equal(pixels(result)[visible], before[visible])
    assert not pixels(result)[~visible].any()  # transparent stays (0, 0, 0, 0)


def test_composite_of_transparent_layers_is_transparent() -> None:
    blank = [Image.new("RGBA", (64, 40), (0, 0, 0, 0)) for _ in range(3)]
    assert not pixels(composite(blank)).any()


def test_png_is_lossless_and_deterministic() -> None:
    (layer,) = make_layers(1, 33, 17)
    data = png_bytes(layer)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "RGBA"
    assert np.array_equal(pixels(decoded), pixels(layer))  # colour under alpha 0 too
    assert png_bytes(layer) == data


# --------------------------------------------------------------------------- PSD


def test_psd_layers_names_pixels_and_size() -> None:
    layers = make_layers(4, 64, 40)
    psd = PSDImage.open(io.BytesIO(to_psd(layers)))
    assert psd.size == (64, 40)
    assert psd.color_mode == 3 and psd.depth == 8  # RGB, 8-bit
    assert len(psd) == 4
    # psd-tools iterates bottom -> top, like the stack.
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3", "Layer 4"]
    for stored, original in zip(psd, layers, strict=True):
        assert stored.kind == "pixel" and stored.visible and stored.opacity == 255
        assert stored.bbox == (0, 0, 64, 40)  # full canvas, not cropped to content
        assert np.array_equal(pixels(stored.topil()), pixels(original))


def test_psd_merged_image_is_the_transparent_composite() -> None:
    layers = make_layers(3, 64, 40, seed=3)
    psd = PSDImage.open(io.BytesIO(to_psd(layers)))
    # A negative layer count is how a layered PSD says "merged image has alpha".
    assert psd._record.layer_and_mask_information.layer_info.layer_count == -3
    merged = psd.topil()  # the stored merged image only, no re-compositing
    assert merged is not None and merged.mode == "RGBA"
    expected = premultiplied(pixels(composite(layers)))
    got = premultiplied(pixels(merged))
    # Photoshop stores the merged colour over white in 8 bits, so allow 2 LSB after
    # premultiplying (straight colour of nearly transparent pixels is ill-defined).
    assert np.abs(got[..., 3] - expected[..., 3]).max() <= 1
    assert np.abs(got - expected).max() <= 2
    # The raw planes follow Photoshop's convention, colour matted over white (so a
    # reader that ignores the alpha channel shows the picture on white, not black).
    header = psd._record.header
    planes = psd._record.image_data.get_data(header)
    raw = np.stack([np.frombuffer(p, np.uint8).reshape(40, 64) for p in planes], axis=-1)
    alpha = expected[..., 3:] / 255.0
    over_white = expected[..., :3] + 255.0 * (1 - alpha)
    assert np.abs(raw[..., :3] - over_white).max() <= 2
    assert np.abs(raw[..., 3].astype(int) - expected[..., 3]).max() <= 1


def test_psd_of_transparent_layers() -> None:
    blank = [Image.new("RGBA", (64, 40), (0, 0, 0, 0)) for _ in range(2)]
    psd = PSDImage.open(io.BytesIO(to_psd(blank)))
    assert len(psd) == 2
    for stored in psd:
        assert not pixels(stored.topil()).any()
    assert not pixels(psd.topil())[..., 3].any()


# --------------------------------------------------------------------------- PPTX


def test_pptx_slide_pictures_and_order() -> None:
    layers = make_layers(3, 160, 100, seed=5)
    prs = Presentation(io.BytesIO(to_pptx(layers)))
    assert (prs.slide_width, prs.slide_height) == (160 * 9525, 100 * 9525)  # 96 dpi
    assert len(prs.slides) == 1
    shapes = list(prs.slides[0].shapes)  # document order = z-order, bottom first
    assert [shape.name for shape in shapes] == ["Layer 1", "Layer 2", "Layer 3"]
    for shape, original in zip(shapes, layers, strict=True):
        assert shape.shape_type == 13  # MSO_SHAPE_TYPE.PICTURE
        assert (shape.left, shape.top, shape.width, shape.height) == (
            0, 0, prs.slide_width, prs.slide_height)
        assert shape.image.content_type == "image/png"
        assert np.array_equal(pixels(Image.open(io.BytesIO(shape.image.blob))), pixels(original))


def test_pptx_identical_layers_still_give_one_picture_each() -> None:
    # python-pptx shares one image part between identical blobs; the shapes must stay.
    blank = [Image.new("RGBA", (128, 128), (0, 0, 0, 0)) for _ in range(3)]
    prs = Presentation(io.BytesIO(to_pptx(blank)))
    assert len(prs.slides[0].shapes) == 3


def test_slide_size_rules() -> None:
    assert slide_size_emu(640, 640) == (6_096_000, 6_096_000)
    assert slide_size_emu(1024, 768) == (9_753_600, 7_315_200)
    # Below 1 inch: scaled up uniformly to the PowerPoint minimum, aspect kept.
    assert slide_size_emu(64, 40) == (1_463_040, 914_400)
    # Above 56 inches: scaled down uniformly.
    assert slide_size_emu(10_752, 5_376) == (51_206_400, 25_603_200)
    # Aspect beyond 56:1 cannot fit: both sides clamped into range.
    assert slide_size_emu(20_000, 10) == (51_206_400, 914_400)


def test_pptx_small_image_gets_a_legal_slide() -> None:
    prs = Presentation(io.BytesIO(to_pptx(make_layers(2, 64, 40))))
    assert (prs.slide_width, prs.slide_height) == slide_size_emu(64, 40)
    assert all(shape.width == prs.slide_width for shape in prs.slides[0].shapes)


# --------------------------------------------------------------------------- ZIP


def test_zip_contents_and_manifest() -> None:
    layers = make_layers(3)
    archive = open_zip(to_zip(layers, MANIFEST))
    names = ["layer_00.png", "layer_01.png", "layer_02.png", "manifest.json"]
    assert archive.namelist() == names
    for name, original in zip(names, layers):
        info = archive.getinfo(name)
        assert info.compress_type == zipfile.ZIP_STORED
        assert np.array_equal(pixels(Image.open(archive.open(name))), pixels(original))
    assert json.loads(archive.read("manifest.json")) == MANIFEST


def test_zip_is_deterministic() -> None:
    layers = make_layers(2)
    first = to_zip(layers, MANIFEST)
    # Same content, different dict insertion order and fresh image objects.
    again = to_zip([layer.copy() for layer in layers], dict(reversed(list(MANIFEST.items()))))
    assert first == again
    assert {info.date_time for info in open_zip(first).infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_layer_filenames_sort_in_stack_order() -> None:
    assert [layer_filename(i, 11) for i in (0, 9, 10)] == [
        "layer_00.png", "layer_09.png", "layer_10.png"]
    assert layer_filename(5, 150) == "layer_005.png"
    names = [layer_filename(i, 12) for i in range(12)]
    assert sorted(names) == names


def test_zip_rejects_non_json_manifest() -> None:
    with pytest.raises(TypeError):
        to_zip(make_layers(1), {"bad": object()})


# --------------------------------------------------------------------------- OpenRaster


def test_ora_structure_and_content() -> None:
    layers = make_layers(3, 300, 180, seed=11)
    data = to_ora(layers)
    # The spec's magic: an uncompressed "mimetype" member first, right after its header.
    assert data[30:38] == b"mimetype" and data[38:54] == b"image/openraster"
    archive = open_zip(data)
    first = archive.infolist()[0]
    assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
    root = ElementTree.fromstring(archive.read("stack.xml"))
    assert root.tag == "image" and (root.get("w"), root.get("h")) == ("300", "180")
    entries = root.find("stack").findall("layer")
    assert [e.get("name") for e in entries] == ["Layer 3", "Layer 2", "Layer 1"]  # top first
    for entry, original in zip(reversed(entries), layers, strict=True):
        assert (entry.get("x"), entry.get("y")) == ("0", "0")
        stored = Image.open(archive.open(entry.get("src")))
        assert np.array_equal(pixels(stored), pixels(original))
    merged = Image.open(archive.open("mergedimage.png"))
    assert np.array_equal(pixels(merged), pixels(composite(layers)))
    thumb = Image.open(archive.open("Thumbnails/thumbnail.png"))
    assert thumb.size == (256, 154) and thumb.mode == "RGBA"
    assert to_ora(layers) == data  # deterministic


# --------------------------------------------------------------------------- build_exports


def test_build_exports_all_formats_and_content_types() -> None:
    layers = make_layers(3)
    exports = build_exports(layers, MANIFEST)
    assert list(exports) == list(EXPORT_FORMATS) == ["psd", "pptx", "zip", "ora"]
    for fmt in (*exports, "png", "json"):
        assert "/" in CONTENT_TYPES[fmt]
    assert exports["psd"][:4] == b"8BPS"
    assert exports["zip"] == to_zip(layers, MANIFEST)
    assert exports["ora"] == to_ora(layers)
    assert len(Presentation(io.BytesIO(exports["pptx"])).slides[0].shapes) == 3
    # Reusing PNGs the caller already has gives the same archives.
    reused = build_exports(layers, MANIFEST, layer_pngs=encode_layers(layers), formats=["zip"])
    assert reused == {"zip": exports["zip"]}


def test_build_exports_rejects_bad_arguments() -> None:
    layers = make_layers(2)
    with pytest.raises(ValueError, match="unknown export format"):
        build_exports(layers, MANIFEST, formats=["tiff"])
    with pytest.raises(ValueError, match="1 encoded PNGs for 2 layers"):
        build_exports(layers, MANIFEST, layer_pngs=encode_layers(layers[:1]))
    with pytest.raises(TypeError):
        build_exports(layers, {"bad": {1, 2}})


# --------------------------------------------------------------------------- edge cases


def test_single_layer_every_format() -> None:
    layers = make_layers(1, 96, 96)
    exports = build_exports(layers, MANIFEST)
    psd = PSDImage.open(io.BytesIO(exports["psd"]))
    assert [layer.name for layer in psd] == ["Layer 1"]
    assert np.array_equal(pixels(psd[0].topil()), pixels(layers[0]))
    assert len(Presentation(io.BytesIO(exports["pptx"])).slides[0].shapes) == 1
    assert open_zip(exports["zip"]).namelist() == ["layer_00.png", "manifest.json"]
    assert len(ElementTree.fromstring(open_zip(exports["ora"]).read("stack.xml"))[0]) == 1


def test_transparent_layers_every_format() -> None:
    blank = [Image.new("RGBA", (120, 100), (0, 0, 0, 0)) for _ in range(3)]
    exports = build_exports(blank, MANIFEST)
    assert len(PSDImage.open(io.BytesIO(exports["psd"]))) == 3
    archive = open_zip(exports["zip"])
    for name in archive.namelist()[:-1]:
        assert not pixels(Image.open(archive.open(name))).any()
    merged = Image.open(open_zip(exports["ora"]).open("mergedimage.png"))
    assert not pixels(merged).any()


def test_other_modes_are_converted_to_rgba() -> None:
    grey = Image.new("L", (64, 40), 128)
    rgb = Image.new("RGB", (64, 40), (10, 20, 30))
    archive = open_zip(to_zip([grey, rgb], {}))
    top = Image.open(archive.open("layer_01.png"))
    assert top.mode == "RGBA" and top.getpixel((0, 0)) == (10, 20, 30, 255)
    assert composite([grey, rgb]).getpixel((5, 5)) == (10, 20, 30, 255)


@pytest.mark.parametrize(
    "build",
    [composite, to_psd, to_pptx, to_ora, lambda ls: to_zip(ls, {}),
     lambda ls: build_exports(ls, {})],
    ids=["composite", "psd", "pptx", "ora", "zip", "build_exports"],
)
def test_mismatched_sizes_are_rejected(build) -> None:  # type: ignore[no-untyped-def]
    layers = make_layers(2, 64, 40) + make_layers(1, 40, 64)
    with pytest.raises(ValueError, match=r"same size: layer 0 is 64x40 but layer 2 is 40x64"):
        build(layers)


def test_empty_and_wrong_types_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_exports([], MANIFEST)
    with pytest.raises(TypeError, match="layer 1 is ndarray"):
        composite([make_layers(1)[0], np.zeros((40, 64, 4), np.uint8)])
    with pytest.raises(TypeError, match="not a single image"):
        composite(make_layers(1)[0])  # type: ignore[arg-type]


def test_module_does_not_import_torch() -> None:
    code = "import sys, worker.exports; sys.exit(1 if 'torch' in sys.modules else 0)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


# --------------------------------------------------------------------------- fast paths
# (the PNG writer, RAW/RLE PSD channels, the reused composite, stored PPTX media and
# encode_all): every shortcut must reopen to exactly what the plain path gives.


def noise_layers(count: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """Uniform random RGBA, the tiny random-weight model's kind of output."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
            for _ in range(count)]


def flat_layers(count: int, width: int, height: int, seed: int = 0) -> list[Image.Image]:
    """Mostly transparent layers of flat shapes, zero colour under alpha 0 (poster-like)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        rgba = np.zeros((height, width, 4), np.uint8)
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        rgba[y0:y0 + height // 3, x0:x0 + width // 3] = (*rng.integers(0, 256, 3), 255)
        out.append(Image.fromarray(rgba, "RGBA"))
    return out


def grain_layer(width: int, height: int, seed: int = 0) -> Image.Image:
    """An opaque smooth gradient with a little noise (photo-like)."""
    rng = np.random.default_rng(seed)
    xx = np.linspace(0, 200, width)[None, :, None]
    rgba = np.clip(xx + rng.normal(0, 3, (height, width, 4)), 0, 255).astype(np.uint8)
    rgba[..., 3] = 255
    return Image.fromarray(rgba, "RGBA")


def png_chunks(data: bytes) -> list[bytes]:
    """The chunk types of a PNG, checking each chunk's CRC and (independently of
    Pillow, which stops reading once it has the pixels) the whole zlib stream."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, idat, offset = [], b"", 8
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        assert data[offset + 8 + length:offset + 12 + length] == zlib.crc32(kind + body).to_bytes(4, "big")
        kinds.append(kind)
        idat += body if kind == b"IDAT" else b""
        offset += 12 + length
    assert offset == len(data)
    zlib.decompress(idat)  # raises on a bad stream or Adler-32
    return kinds


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
# Stored IDATs are split in 65535-byte deflate blocks: 64x510 RGBA and 256x510 L
# scanlines fill exactly two, 300x218 RGBA spills into a fourth.
@pytest.mark.parametrize("size", [(1, 1), (5, 3), (64, 40), (300, 17), (300, 218), (64, 510), (256, 510)])
@pytest.mark.parametrize("level", [None, 0, 1, 9])
def test_png_writer_roundtrips_every_mode_and_level(mode: str, size: tuple[int, int], level) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(len(mode) * 1000 + size[0])
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    image = image.convert(mode)
    data = png_bytes(image, level)
    assert png_chunks(data) == [b"IHDR", b"IDAT", b"IEND"]  # no metadata chunks
    decoded = Image.open(io.BytesIO(data))
    decoded.load()  # checks every CRC and the zlib stream
    assert decoded.mode == mode and decoded.size == size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert png_bytes(image, level) == data


@pytest.mark.parametrize(
    "image",
    [noise_layers(1, 640, 64)[0], flat_layers(1, 640, 64)[0], grain_layer(640, 64),
     make_layers(1, 640, 64)[0]],
    ids=["noise", "flat", "grain", "shapes-over-noise"],
)
def test_png_auto_compression_is_lossless_and_sensible(image: Image.Image) -> None:
    data = png_bytes(image)
    assert np.array_equal(pixels(Image.open(io.BytesIO(data))), pixels(image))
    raw = 640 * 64 * 4
    # Never much bigger than raw (noise is stored), and at least as good as Pillow's
    # fastest level on compressible content, give or take.
    assert len(data) <= raw * 1.01
    pillow = io.BytesIO()
    image.save(pillow, format="PNG", compress_level=1)
    assert len(data) <= max(1.25 * len(pillow.getvalue()), 0.95 * raw)


def test_png_with_pillow_metadata_or_other_modes_goes_through_pillow() -> None:
    rgb = Image.new("RGB", (20, 10), (1, 2, 3))
    rgb.info["icc_profile"] = b"not really a profile"
    assert b"iCCP" in png_chunks(png_bytes(rgb))
    palette = Image.new("P", (20, 10), 3)
    assert Image.open(io.BytesIO(png_bytes(palette))).mode == "P"


def channel_compressions(psd: PSDImage) -> list[dict[int, int]]:
    """Per layer, bottom first: {channel id: compression} (-1 = transparency)."""
    info = psd._record.layer_and_mask_information.layer_info
    return [
        {int(ci.id): int(data.compression) for ci, data in zip(record.channel_info, channels, strict=True)}
        for record, channels in zip(info.layer_records, info.channel_image_data, strict=True)
    ]


RAW_ALL = {-1: 0, 0: 0, 1: 0, 2: 0}
RLE_ALL = {-1: 1, 0: 1, 1: 1, 2: 1}


@pytest.mark.parametrize("kind", ["noise", "flat", "mixed"])
def test_psd_raw_and_rle_channels_decode_to_the_layers(kind: str) -> None:
    if kind == "noise":
        layers = noise_layers(3, 200, 120)
    elif kind == "flat":
        layers = flat_layers(3, 200, 120)
    else:
        layers = [grain_layer(200, 120), *flat_layers(1, 200, 120), *noise_layers(1, 200, 120)]
    psd = PSDImage.open(io.BytesIO(to_psd(layers)))
    if kind == "noise":
        assert channel_compressions(psd) == [RAW_ALL] * 3  # RLE would only grow noise
    elif kind == "flat":
        assert channel_compressions(psd) == [RLE_ALL] * 3
    else:
        # Decided per channel: the opaque grainy layer's alpha is RLE, its colour RAW.
        assert channel_compressions(psd) == [{-1: 1, 0: 0, 1: 0, 2: 0}, RLE_ALL, RAW_ALL]
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3"]
    for stored, original in zip(psd, layers, strict=True):
        assert stored.bbox == (0, 0, 200, 120)
        assert np.array_equal(pixels(stored.topil()), pixels(original))
    # The merged image decodes (RAW or RLE) to the matted composite.
    header = psd._record.header
    planes = psd._record.image_data.get_data(header)
    raw = np.stack([np.frombuffer(p, np.uint8).reshape(120, 200) for p in planes])
    assert np.array_equal(raw, merged_planes(composite(layers)))


def test_psd_merged_image_equals_the_composite_we_store() -> None:
    layers = make_layers(4, 97, 61, seed=9)
    flat = composite(layers)
    data = to_psd(layers)
    assert to_psd(layers, merged=flat) == data  # reusing the composite changes nothing
    psd = PSDImage.open(io.BytesIO(data))
    header = psd._record.header
    raw = np.stack([np.frombuffer(p, np.uint8).reshape(61, 97)
                    for p in psd._record.image_data.get_data(header)], axis=-1)
    rgba = pixels(flat).astype(int)
    alpha = rgba[..., 3:]
    # Exactly the composite's colour over white, rounded once, and its alpha.
    expected = np.floor(rgba[..., :3] * alpha / 255 + 255 - alpha + 0.5)
    assert np.array_equal(raw[..., :3], expected)
    assert np.array_equal(raw[..., 3], rgba[..., 3])
    merged = psd.topil()
    opaque = rgba[..., 3] == 255
    assert np.array_equal(pixels(merged)[opaque], pixels(flat)[opaque])


def test_merged_planes_rounding_is_exact_for_every_colour_and_alpha() -> None:
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, colour, colour, alpha], axis=-1).astype(np.uint8)
    planes = merged_planes(Image.fromarray(rgba, "RGBA"))
    expected = np.floor(colour * alpha / 255 + 255 - alpha + 0.5)
    assert np.array_equal(planes[0], expected) and np.array_equal(planes[3], alpha)


def test_psd_rejects_a_merged_image_of_another_size() -> None:
    layers = make_layers(2, 64, 40)
    with pytest.raises(ValueError, match="merged image is 40x64"):
        to_psd(layers, merged=Image.new("RGBA", (40, 64)))


def test_pptx_stores_pictures_deflates_xml_and_is_deterministic() -> None:
    layers = noise_layers(2, 160, 100) + flat_layers(1, 160, 100)
    pngs = encode_layers(layers)
    data = to_pptx(layers, layer_pngs=pngs)
    archive = open_zip(data)
    names = archive.namelist()
    assert names[0] == "[Content_Types].xml"
    media = [info for info in archive.infolist() if info.filename.startswith("ppt/media/")]
    assert sorted(archive.read(info) for info in media if info.filename.endswith(".png")) == sorted(pngs)
    for info in archive.infolist():
        is_media = info.filename.startswith("ppt/media/") or info.filename.endswith(".jpeg")
        assert info.compress_type == (zipfile.ZIP_STORED if is_media else zipfile.ZIP_DEFLATED)
    prs = Presentation(io.BytesIO(data))
    for shape, original in zip(prs.slides[0].shapes, layers, strict=True):
        assert np.array_equal(pixels(Image.open(io.BytesIO(shape.image.blob))), pixels(original))
    assert to_pptx(layers, layer_pngs=pngs) == data


def test_psd_layer_records_are_the_ones_psd_tools_builds() -> None:
    # to_psd builds the layer section from the planes with psd-tools' record classes instead of
    # PSDImage.create_pixel_layer; on layers whose channels all stay RAW (noise) the file must be
    # byte for byte what create_pixel_layer gives, with the same merged image.
    from psd_tools.constants import Compression
    from psd_tools.psd.image_data import ImageData

    from worker.exports import sink as sinks
    from worker.exports.photoshop import merged_planes

    layers = noise_layers(3, 96, 64)
    flat = composite(layers)
    document = PSDImage.new("RGBA", (96, 64), color=0)
    document._merged_alpha = True
    for index, layer in enumerate(layers):
        document.create_pixel_layer(layer, name=f"Layer {index + 1}", top=0, left=0, compression=Compression.RAW)
    record = document._record
    record.image_data = ImageData(compression=Compression.RAW, data=merged_planes(flat).tobytes())
    reference = sinks.ByteSink()
    record.write(reference)
    assert to_psd(layers, merged=flat) == reference.getvalue()


def test_composite_of_one_layer_is_pillows_over_a_transparent_canvas() -> None:
    # composite() skips Pillow's first "over" (transparent canvas, bottom layer) as a no-op up
    # to zeroing fully transparent pixels; that must hold for every colour and alpha value.
    colour, alpha = np.meshgrid(np.arange(256), np.arange(256))
    rgba = np.stack([colour, 255 - colour, colour // 2, alpha], -1).astype(np.uint8)
    layer = Image.fromarray(rgba, "RGBA")
    pillow = Image.alpha_composite(Image.new("RGBA", layer.size, (0, 0, 0, 0)), layer)
    assert np.array_equal(pixels(composite([layer])), pixels(pillow))
    layers = make_layers(3, 64, 48, seed=9)
    chained = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    for one in layers:
        chained = Image.alpha_composite(chained, one)
    assert np.array_equal(pixels(composite(layers)), pixels(chained))


def test_pptx_from_the_cached_skeleton_is_python_pptxs_own_deck() -> None:
    # to_pptx fills a per-(size, count) skeleton instead of building the deck each time; it
    # must be the very file python-pptx builds for these pictures, for every size and count.
    from worker.exports import slides

    for layers in (noise_layers(2, 160, 100) + flat_layers(1, 160, 100), make_layers(4, 90, 200, seed=8)):
        pngs = encode_layers(layers)
        direct = slides._zip(slides._members(slides._build(layers[0].size, pngs))).getvalue()
        assert to_pptx(layers, layer_pngs=pngs) == direct
    assert slides._skeleton.cache_info().currsize >= 2


def test_ora_reuses_a_given_merged_png() -> None:
    layers = make_layers(3, 80, 50, seed=4)
    flat = composite(layers)
    assert to_ora(layers, merged=flat, merged_png=png_bytes(flat)) == to_ora(layers)


@pytest.mark.parametrize("threads", [None, 1, 3])
def test_encode_all_matches_the_single_format_builders(threads) -> None:  # type: ignore[no-untyped-def]
    layers = make_layers(3, 90, 70, seed=2) + noise_layers(1, 90, 70)
    if threads is None:
        pngs, composite_png, files = encode_all(layers, MANIFEST)
    else:
        with ThreadPoolExecutor(threads) as pool:  # one thread must not deadlock
            pngs, composite_png, files = encode_all(layers, MANIFEST, pool=pool)
    assert pngs == encode_layers(layers)
    assert composite_png == png_bytes(composite(layers))
    assert list(files) == list(EXPORT_FORMATS)
    assert files == build_exports(layers, MANIFEST)
    assert files["psd"] == to_psd(layers)
    assert files["zip"] == to_zip(layers, MANIFEST)
    assert files["ora"] == to_ora(layers)
    assert files["pptx"] == to_pptx(layers)


def test_encode_all_hands_over_pieces_of_the_same_bytes() -> None:
    # pieces=True (what the worker asks for) must change how the exports are handed over, never
    # what they hold; the big pieces are the layer PNGs themselves, not copies of them.
    from storage.base import Pieces

    layers = make_layers(3, 90, 70, seed=2) + noise_layers(1, 90, 70)
    seen: dict[str, object] = {}
    pngs, _, files = encode_all(layers, MANIFEST, ("psd", "pptx", "zip"), pieces=True,
                                on_ready=lambda name, data: seen.setdefault(name, data))
    for fmt in ("psd", "pptx", "zip"):
        assert isinstance(files[fmt], Pieces) and seen[fmt] is files[fmt]
        assert files[fmt].tobytes() == build_exports(layers, MANIFEST, formats=(fmt,))[fmt]
        assert files[fmt].nbytes == len(files[fmt].tobytes())
    assert any(piece is png for png in pngs for piece in files["zip"])


def test_encode_all_subset_order_and_errors() -> None:
    layers = make_layers(2)
    pngs, composite_png, files = encode_all(layers, MANIFEST, ("ora", "psd"))
    assert list(files) == ["psd", "ora"] and len(pngs) == 2 and composite_png[:4] == b"\x89PNG"
    assert encode_all(layers, MANIFEST, ())[2] == {}
    with pytest.raises(ValueError, match="unknown export format"):
        encode_all(layers, MANIFEST, ("tiff",))
    with pytest.raises(TypeError):
        encode_all(layers, {"bad": object()})
    with pytest.raises(ValueError, match="same size"):
        encode_all(make_layers(1, 64, 40) + make_layers(1, 40, 64), MANIFEST)


def test_encode_all_accepts_lazily_read_layers() -> None:
    layers = make_layers(3, 70, 50, seed=6)
    lazy = [Image.open(io.BytesIO(png_bytes(layer))) for layer in layers]  # not loaded yet
    pngs, composite_png, files = encode_all(lazy, MANIFEST, ("psd", "zip"))
    assert pngs == encode_layers(layers)
    assert composite_png == png_bytes(composite(layers))
    assert files == {"psd": to_psd(layers), "zip": to_zip(layers, MANIFEST)}


@pytest.mark.parametrize("width", [1, 2, 127, 128, 129, 300])
def test_rle_plane_is_psd_tools_packbits_byte_for_byte(width: int) -> None:
    rng = np.random.default_rng(width)
    rows = [
        np.zeros(width), np.full(width, 255), np.full(width, 7), np.full(width, 7),  # uniform
        rng.integers(0, 256, width), rng.integers(0, 3, width),  # literal-ish, short runs
        np.repeat(rng.integers(0, 256, width // 3 + 1), 3)[:width],  # runs of 3
        np.zeros(width), rng.integers(0, 256, width), np.full(width, 7),
    ]
    plane = np.stack(rows).astype(np.uint8)
    expected = encode_rle(plane.tobytes(), width, plane.shape[0], 8, 1)
    assert rle_plane(plane) == expected
    assert decode_rle(expected, width, plane.shape[0], 8, 1) == plane.tobytes()
    assert rle_plane(plane[:1]) == encode_rle(plane[:1].tobytes(), width, 1, 8, 1)
    assert rle_plane(plane[4:5]) == encode_rle(plane[4:5].tobytes(), width, 1, 8, 1)
