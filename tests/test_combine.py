"""Combine: uploaded layers of different sizes and offsets become one layer set whose composite and
exports (PSD, ORA, PPTX) all agree with an independent numpy reference."""

from __future__ import annotations

import io
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image
from pptx import Presentation
from psd_tools import PSDImage

from tests.layerset_helpers import pixels, premultiplied, reference_over, soft_blob
from worker.exports import encode_all
from worker.layersets.combine import MAX_CANVAS_SIDE, canvas_for, combine
from worker.layersets.placed import Canvas, PlacedLayer


def uploads() -> list[PlacedLayer]:
    """Bottom to top: an opaque 90x60 backdrop, a half-transparent red 40x30 at (20, 10), a soft blue
    blob 50x50 at (45, 20) that runs past the backdrop's right and bottom edges, and a green square
    at a negative offset. Order matters wherever they overlap."""
    backdrop = Image.new("RGBA", (90, 60), (250, 240, 220, 255))
    red = Image.new("RGBA", (40, 30), (220, 30, 40, 160))
    blob = soft_blob((50, 50), (25, 25), 18, (20, 60, 230))
    green = Image.new("RGBA", (20, 20), (10, 200, 60, 255))
    return [PlacedLayer(backdrop), PlacedLayer(red, 20, 10), PlacedLayer(blob, 45, 20), PlacedLayer(green, -5, -8)]


def reference(layers: list[PlacedLayer], canvas: Canvas) -> tuple[list[np.ndarray], np.ndarray]:
    """Each layer placed on the canvas by numpy slicing, and their float "over" composite."""
    placed = []
    for layer in layers:
        plane = np.zeros((canvas.height, canvas.width, 4), np.uint8)
        src = np.asarray(layer.image)
        y0, x0 = max(0, layer.y), max(0, layer.x)
        y1 = min(canvas.height, layer.y + src.shape[0])
        x1 = min(canvas.width, layer.x + src.shape[1])
        plane[y0:y1, x0:x1] = src[y0 - layer.y:y1 - layer.y, x0 - layer.x:x1 - layer.x]
        placed.append(plane)
    return placed, reference_over(placed)


def close(got: np.ndarray, expected: np.ndarray, levels: float = 1) -> bool:
    """Within *levels* per channel, comparing premultiplied colour (straight colour under alpha 0 is
    arbitrary; Photoshop stores the merged image over white)."""
    return float(np.abs(premultiplied(got) - premultiplied(expected)).max()) <= levels


def test_canvas_runs_from_the_origin_to_the_furthest_edge():
    assert canvas_for(uploads()) == Canvas(95, 70)  # blob reaches x 45+50, y 20+50
    assert combine(uploads(), Canvas(30, 30)).canvas == Canvas(30, 30)


def test_canvas_rule_rejects_nothing_on_canvas_and_huge_spans():
    with pytest.raises(ValueError):
        canvas_for([PlacedLayer(Image.new("RGBA", (10, 10)), -20, 0)])
    with pytest.raises(ValueError):
        canvas_for([PlacedLayer(Image.new("RGBA", (10, 10)), MAX_CANVAS_SIDE, 0)])
    with pytest.raises(ValueError):
        canvas_for([])


def test_combined_set_numbers_layers_by_upload_index():
    result = combine([layer.image for layer in uploads()[:2]])
    assert [layer.source for layer in result.layers] == [0, 1]
    assert result.canvas == Canvas(90, 60)


def test_order_matters_and_every_output_agrees_with_the_reference():
    layers = uploads()
    combined = combine(layers)
    canvas = combined.canvas
    placed, expected = reference(layers, canvas)
    swapped_expected = reference_over([placed[0], placed[2], placed[1], placed[3]])
    assert not close(expected, swapped_expected, 10)  # the test would not see a wrong order

    stack = combined.stack
    assert [image.size for image in stack] == [canvas.size] * 4
    for image, plane in zip(stack, placed, strict=True):
        assert np.array_equal(pixels(image), plane)
    assert close(pixels(combined.composite()), expected)

    layer_pngs, composite_png, exports = encode_all(stack, {"kind": "combine"})
    assert close(pixels(Image.open(io.BytesIO(composite_png))), expected)

    psd = PSDImage.open(io.BytesIO(exports["psd"]))
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3", "Layer 4"]
    for stored, plane in zip(psd, placed, strict=True):
        assert np.array_equal(pixels(stored.topil()), plane)
    assert close(pixels(psd.topil()), expected, 2)  # merged image stored over white: 2 levels
    assert close(pixels(psd.composite()), expected, 2)  # psd-tools' own flattening of the layers

    ora = zipfile.ZipFile(io.BytesIO(exports["ora"]))
    stack_xml = ElementTree.fromstring(ora.read("stack.xml"))
    sources = [layer.get("src") for layer in stack_xml.iter("layer")]  # top first
    ora_planes = [pixels(Image.open(io.BytesIO(ora.read(src)))) for src in reversed(sources)]
    assert all(np.array_equal(got, plane) for got, plane in zip(ora_planes, placed, strict=True))
    assert close(reference_over(ora_planes), expected)
    assert close(pixels(Image.open(io.BytesIO(ora.read("mergedimage.png")))), expected)

    slide = Presentation(io.BytesIO(exports["pptx"])).slides[0]
    pictures = [pixels(Image.open(io.BytesIO(shape.image.blob))) for shape in slide.shapes]  # z-order
    assert all(np.array_equal(got, plane) for got, plane in zip(pictures, placed, strict=True))
    assert close(reference_over(pictures), expected)


def test_hidden_and_faded_uploads_render_as_the_reference_says():
    layers = uploads()
    layers[1] = PlacedLayer(layers[1].image, 20, 10, opacity=0.5)
    layers[3] = PlacedLayer(layers[3].image, -5, -8, visible=False)
    combined = combine(layers)
    placed, _ = reference(layers, combined.canvas)
    placed[1][..., 3] = np.floor(placed[1][..., 3] * 0.5 + 0.5)
    expected = reference_over(placed[:3])
    assert len(combined.stack) == 3
    assert close(pixels(combined.composite()), expected)
