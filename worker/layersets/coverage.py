"""Choosing the layer count for the user: drop the layers that hardly show.

A layer's *visible coverage* is its share of the composite: the mean over the canvas of
``alpha_i * prod_{j above i} (1 - alpha_j)`` (alphas in 0..1), i.e. how much of each pixel's final
colour comes from that layer once the layers above have covered it. The shares of a set add up to
the composite's mean alpha (at most 1). A layer that is empty, nearly transparent everywhere, or
hidden under opaque layers above has a coverage near 0 and is dropped; order is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from worker.exports import validate_layers

#: Layers whose visible coverage is under this share of the canvas are dropped by `layers: "auto"`
#: and `drop_empty: true`: 0.5 %, a 45x45 px patch of a 640x640 picture.
SPARSE_COVERAGE = 0.005


@dataclass(frozen=True)
class DroppedLayer:
    """A layer left out, by its index in the decomposition, with its visible coverage (0..1)."""

    index: int
    coverage: float


def visible_coverage(layers: Sequence[Image.Image]) -> list[float]:
    """Each layer's share of the composite (see the module docstring), bottom first."""
    stack = validate_layers(layers)
    above = np.ones(stack[0].size[::-1], np.float64)  # what the layers above let through, per pixel
    shares = [0.0] * len(stack)
    for index in reversed(range(len(stack))):
        alpha = np.asarray(stack[index].getchannel("A"), np.float64) / 255
        shares[index] = float((alpha * above).mean())
        above *= 1 - alpha
    return shares


def drop_sparse_layers(
    layers: Sequence[Image.Image], threshold: float = SPARSE_COVERAGE,
) -> tuple[list[Image.Image], list[DroppedLayer]]:
    """``(kept, dropped)``: the layers whose visible coverage reaches *threshold*, in their order,
    and the others with their index and coverage. At least one layer is always kept (the one with
    the largest coverage), since a layer set cannot be empty.

    Dropping changes the composite by at most the dropped layers' coverage, pixel-weighted.
    """
    shares = visible_coverage(layers)
    keep = [share >= threshold for share in shares]
    if not any(keep):
        keep[int(np.argmax(shares))] = True
    kept = [layer for layer, flag in zip(layers, keep, strict=True) if flag]
    dropped = [DroppedLayer(i, round(share, 6)) for i, (share, flag) in enumerate(zip(shares, keep, strict=True))
               if not flag]
    return kept, dropped
