"""Exports of a decomposition tree: the PSD nests sub-layers in a group named after the decomposed
layer, the ORA nests a stack, and both flatten to the tree's composite."""

from __future__ import annotations

import io
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image
from pptx import Presentation
from psd_tools import PSDImage

from tests.layerset_helpers import pixels, premultiplied, reference_over, shape_layer, soft_blob
from worker.exports import encode_all, to_ora, to_psd
from worker.layersets.tree import Decomposition, leaves, ora_stack_xml, tree_composite, tree_exports

SIZE = (64, 48)


def parent_set() -> list[Image.Image]:
    return [
        Image.new("RGBA", SIZE, (245, 235, 215, 255)),
        shape_layer(SIZE, (8, 6, 40, 36), (200, 40, 40, 255)),
        shape_layer(SIZE, (30, 20, 60, 44), (40, 40, 200, 200), "ellipse"),
    ]


def tree() -> Decomposition:
    """Layer 2 (index 1) decomposed into three sub-layers, and its sub-layer 2.2 once more."""
    sub = [
        shape_layer(SIZE, (8, 6, 40, 36), (200, 40, 40, 255)),
        shape_layer(SIZE, (12, 10, 24, 22), (250, 200, 30, 255)),
        soft_blob(SIZE, (30, 28), 6, (20, 160, 90)),
    ]
    subsub = [shape_layer(SIZE, (12, 10, 24, 22), (250, 200, 30, 255)), shape_layer(SIZE, (15, 13, 20, 18), (0, 0, 0, 255))]
    return Decomposition(parent_set(), {1: Decomposition(sub, {1: Decomposition(subsub)})})


def close(got: np.ndarray, expected: np.ndarray, levels: float = 1) -> bool:
    return float(np.abs(premultiplied(got) - premultiplied(expected)).max()) <= levels


def test_leaves_are_depth_first_bottom_first_with_dotted_names():
    assert [(leaf.name, leaf.groups) for leaf in leaves(tree())] == [
        ("Layer 1", ()),
        ("Layer 2.1", ("Layer 2",)),
        ("Layer 2.2.1", ("Layer 2", "Layer 2.2")),
        ("Layer 2.2.2", ("Layer 2", "Layer 2.2")),
        ("Layer 2.3", ("Layer 2",)),
        ("Layer 3", ()),
    ]


def test_a_decomposed_index_must_exist():
    with pytest.raises(ValueError):
        Decomposition(parent_set(), {3: Decomposition(parent_set())})


def test_psd_nests_groups_and_flattens_to_the_tree_composite():
    the_tree = tree()
    expected = reference_over([pixels(leaf.image) for leaf in leaves(the_tree)])
    assert close(pixels(tree_composite(the_tree)), expected)
    pngs, composite_png, exports = tree_exports(the_tree, {"kind": "decompose"})
    assert close(pixels(Image.open(io.BytesIO(composite_png))), expected)

    psd = PSDImage.open(io.BytesIO(exports["psd"]))
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3"]
    group = psd[1]
    assert group.is_group() and group.kind == "group"
    assert [layer.name for layer in group] == ["Layer 2.1", "Layer 2.2", "Layer 2.3"]
    assert group[1].is_group() and [layer.name for layer in group[1]] == ["Layer 2.2.1", "Layer 2.2.2"]
    flat = [layer for layer in psd.descendants() if not layer.is_group()]
    for stored, leaf in zip(flat, leaves(the_tree), strict=True):
        assert stored.name == leaf.name and np.array_equal(pixels(stored.topil()), pixels(leaf.image))
    assert close(pixels(psd.topil()), expected, 2)  # the stored merged image (over white: 2 levels)
    assert close(pixels(psd.composite()), expected, 2)  # psd-tools flattening the groups itself


def test_ora_nests_stacks_and_flattens_to_the_tree_composite():
    the_tree = tree()
    expected = reference_over([pixels(leaf.image) for leaf in leaves(the_tree)])
    ora = zipfile.ZipFile(io.BytesIO(tree_exports(the_tree, {})[2]["ora"]))
    root = ElementTree.fromstring(ora.read("stack.xml"))[0]
    # ORA lists the top first.
    assert [(child.tag, child.get("name")) for child in root] == [
        ("layer", "Layer 3"), ("stack", "Layer 2"), ("layer", "Layer 1")]
    group = root[1]
    assert [(child.tag, child.get("name")) for child in group] == [
        ("layer", "Layer 2.3"), ("stack", "Layer 2.2"), ("layer", "Layer 2.1")]
    assert [child.get("name") for child in group[1]] == ["Layer 2.2.2", "Layer 2.2.1"]

    def flatten(stack: ElementTree.Element) -> list[np.ndarray]:  # bottom first
        out: list[np.ndarray] = []
        for child in reversed(list(stack)):
            if child.tag == "stack":
                out.extend(flatten(child))
            else:
                out.append(pixels(Image.open(io.BytesIO(ora.read(child.get("src"))))))
        return out

    assert close(reference_over(flatten(root)), expected)
    assert close(pixels(Image.open(io.BytesIO(ora.read("mergedimage.png")))), expected)
    assert ora.namelist()[0] == "mimetype"


def test_flat_formats_hold_the_leaves_in_order():
    the_tree = tree()
    pngs, _, exports = tree_exports(the_tree, {"tree": True})
    assert len(pngs) == 6
    archive = zipfile.ZipFile(io.BytesIO(exports["zip"]))
    assert sorted(name for name in archive.namelist() if name.endswith(".png")) == [f"layer_0{i}.png" for i in range(6)]
    slide = Presentation(io.BytesIO(exports["pptx"])).slides[0]
    for shape, leaf in zip(slide.shapes, leaves(the_tree), strict=True):
        assert np.array_equal(pixels(Image.open(io.BytesIO(shape.image.blob))), pixels(leaf.image))


def test_a_tree_without_decompositions_exports_like_a_flat_set():
    layers = parent_set()
    _, composite_png, exports = tree_exports(Decomposition(layers), {"k": 1})
    flat_pngs, flat_composite, flat = encode_all(layers, {"k": 1})
    assert composite_png == flat_composite
    assert exports["psd"] == to_psd(layers)  # the same records, byte for byte
    assert exports["ora"] == flat["ora"] == to_ora(layers)
    assert exports["zip"] == flat["zip"]
    assert ora_stack_xml(Decomposition(layers)) == zipfile.ZipFile(io.BytesIO(flat["ora"])).read("stack.xml")


def test_sub_layers_of_another_resolution_are_fitted_to_the_parent_canvas():
    from worker.layersets.tree import fitted

    same = Image.new("RGBA", SIZE)
    big = Image.new("RGBA", (128, 96), (10, 20, 30, 255))
    out = fitted([same, big], SIZE)
    assert out[0] is same and out[1].size == SIZE
    assert tuple(pixels(out[1])[10, 10]) == (10, 20, 30, 255)
