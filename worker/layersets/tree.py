"""Exports of a decomposition tree: a layer set some of whose layers were decomposed again.

A recursive decomposition replaces layer *i* of its parent set with that layer's own sub-layers.
The tree's composite is the composite of its leaves in depth-first order, bottom first (the
decomposed layer itself is not drawn: its sub-layers stand for it). The PSD nests each layer's
sub-layers in a group named after it ("Layer 2" holds "Layer 2.1", "Layer 2.2", ...); the ORA nests a
``<stack>`` of the same name. Both flatten to the tree's composite. The ZIP and PPTX, which have no
groups, hold the leaves in the same depth-first order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image
from psd_tools.psd.layer_and_mask import ChannelImageData, LayerInfo, LayerRecords

from worker.exports import EXPORT_FORMATS, build_exports, composite, encode_layers, png_bytes, validate_layers
from worker.exports.archives import ORA_SPEC_VERSION, layer_filename, ora_layer, to_ora
from worker.exports.photoshop import group_markers, layer_name, pixel_layer, psd_sink


@dataclass(frozen=True)
class Decomposition:
    """A layer set (canvas-sized layers, bottom first) and, for each layer that was decomposed
    again, that layer's own decomposition, by the layer's index in this set."""

    layers: Sequence[Image.Image]
    decomposed: Mapping[int, Decomposition] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for index in self.decomposed:
            if not 0 <= index < len(self.layers):
                raise ValueError(f"layer {index} was decomposed but the set has {len(self.layers)} layers")


@dataclass(frozen=True)
class Leaf:
    """A layer drawn in the tree's composite, with its display name and the groups above it."""

    name: str
    image: Image.Image
    groups: tuple[str, ...]


def leaves(tree: Decomposition, prefix: str = "", groups: tuple[str, ...] = ()) -> list[Leaf]:
    """The tree's drawn layers, depth first, bottom first, named "Layer 2", "Layer 2.1", ..."""
    out: list[Leaf] = []
    for index, image in enumerate(tree.layers):
        name = f"{prefix}.{index + 1}" if prefix else layer_name(index)
        child = tree.decomposed.get(index)
        if child is None:
            out.append(Leaf(name, image, groups))
        else:
            out.extend(leaves(child, name, (*groups, name)))
    return out


def fitted(layers: Sequence[Image.Image], size: tuple[int, int]) -> list[Image.Image]:
    """Sub-layers brought to the parent canvas *size*: unchanged when they have it (the model gives a
    layer decomposed at its set's resolution its own size back), else resized with Lanczos (a
    sub-decomposition run at another resolution bucket)."""
    return [layer if layer.size == tuple(size) else layer.convert("RGBA").resize(size, Image.Resampling.LANCZOS)
            for layer in layers]


def tree_stack(tree: Decomposition) -> list[Image.Image]:
    """The leaves' images, validated (RGBA, one size): what the flat exports and the PNGs hold."""
    return validate_layers([leaf.image for leaf in leaves(tree)])


def tree_composite(tree: Decomposition) -> Image.Image:
    """The tree flattened: :func:`~worker.exports.composite` of its leaves."""
    return composite(tree_stack(tree))


def psd_layer_info(tree: Decomposition) -> LayerInfo:
    """The PSD layer section of *tree*: leaves as pixel layers, each decomposed layer as a group.

    Records run bottom first; a group is its closing divider, its members, then its opening
    record (see :func:`~worker.exports.photoshop.group_markers`)."""
    records, channels = LayerRecords(), ChannelImageData()

    def add(entry: tuple[Any, Any]) -> None:
        records.append(entry[0])
        channels.append(entry[1])

    def walk(node: Decomposition, prefix: str) -> None:
        for index, image in enumerate(node.layers):
            name = f"{prefix}.{index + 1}" if prefix else layer_name(index)
            child = node.decomposed.get(index)
            if child is None:
                add(pixel_layer(np.asarray(image.convert("RGBA")), name))
                continue
            opening, closing = group_markers(name)
            add(closing)
            walk(child, name)
            add(opening)

    walk(tree, "")
    return LayerInfo(layer_count=-len(records), layer_records=records, channel_image_data=channels)


def ora_stack_xml(tree: Decomposition) -> bytes:
    """The ORA ``stack.xml`` of *tree*: one nested ``<stack>`` per decomposed layer, named after
    it, top first like every ORA stack; ``src`` names the leaves' ``data/layer_NN.png`` in
    depth-first order, as :func:`tree_exports` stores them."""
    count = len(leaves(tree))
    width, height = tree_stack(tree)[0].size
    image = ElementTree.Element("image", {"version": ORA_SPEC_VERSION, "w": str(width), "h": str(height)})
    root = ElementTree.SubElement(image, "stack")
    numbering = iter(range(count))

    def walk(node: Decomposition, prefix: str) -> list[tuple[str, Any]]:
        # Collected bottom first (the leaf numbering), then appended top first.
        entries: list[tuple[str, Any]] = []
        for index in range(len(node.layers)):
            name = f"{prefix}.{index + 1}" if prefix else layer_name(index)
            child = node.decomposed.get(index)
            if child is None:
                entries.append(("layer", (name, f"data/{layer_filename(next(numbering), count)}")))
            else:
                entries.append(("stack", (name, walk(child, name))))
        return entries

    def emit(parent: ElementTree.Element, entries: list[tuple[str, Any]]) -> None:
        for kind, payload in reversed(entries):
            if kind == "layer":
                ora_layer(parent, *payload)
            else:
                name, children = payload
                stack = ElementTree.SubElement(parent, "stack", {
                    "name": name, "x": "0", "y": "0", "opacity": "1.000", "visibility": "visible",
                    "composite-op": "svg:src-over", "isolation": "auto",
                })
                emit(stack, children)

    emit(root, walk(tree, ""))
    return ElementTree.tostring(image, encoding="UTF-8", xml_declaration=True)


def tree_exports(
    tree: Decomposition, manifest: Mapping[str, Any], formats: Sequence[str] = EXPORT_FORMATS,
) -> tuple[list[bytes], bytes, dict[str, bytes]]:
    """What a job stores for a tree, as :func:`~worker.exports.encode_all` returns it for a flat
    stack: ``(leaf_pngs, composite_png, exports)``. The PSD and ORA are nested; the ZIP and PPTX
    hold the leaves flat, depth first."""
    stack = tree_stack(tree)
    merged = composite(stack)
    pngs = encode_layers(stack)
    composite_png = png_bytes(merged)
    flat = [fmt for fmt in formats if fmt in ("pptx", "zip")]
    built = build_exports(stack, manifest, layer_pngs=pngs, formats=flat, merged=merged) if flat else {}
    if "psd" in formats:
        built["psd"] = psd_sink(stack, merged=merged, layers_section=psd_layer_info(tree)).getvalue()
    if "ora" in formats:
        built["ora"] = to_ora(stack, layer_pngs=pngs, merged=merged, merged_png=composite_png,
                              stack_xml=ora_stack_xml(tree))
    exports = {fmt: built[fmt] for fmt in EXPORT_FORMATS if fmt in built}
    return pngs, composite_png, exports
