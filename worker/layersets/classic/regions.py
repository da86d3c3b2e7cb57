"""Regions of a flat graphic: connected areas of near-constant colour, what encloses what, and
groups of same-coloured regions.

1. Neighbouring pixels (4-connected) whose colours differ by at most `SIMILAR_LEVELS` in every
   channel are joined; the connected components are the candidate regions. A smooth gradient
   stays one region, a drawn edge splits.
2. Components smaller than `min_area`, or without one 2x2 block of pixels, are *fringe*: anti-aliased edge pixels, specks, texture.
   Each fringe pixel is owned by the nearest real region (the *core* of a region is its own
   pixels, its *mask* adds the fringe it owns).
3. A region's *hull* is its mask with the holes filled; a region lying in another's hole is
   enclosed by it. Hulls of 4-connected regions nest or are disjoint, so painting them largest
   first and reading what lies under each region gives its direct encloser (its parent) and depth.
4. Palette clustering: regions at the same depth whose mean colours lie within
   `PALETTE_DISTANCE` of each other form one group (one layer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Neighbours whose colours differ by at most this many levels in every channel join one region.
SIMILAR_LEVELS = 10
#: Regions smaller than this share of the picture (and never under MIN_REGION_PX) are fringe.
MIN_REGION_SHARE = 0.00005
MIN_REGION_PX = 12
#: Same-depth regions whose mean colours are within this Euclidean RGB distance are one group.
PALETTE_DISTANCE = 48.0


@dataclass
class Region:
    """One region: its pixels (as a bounding-box slice and masks within it) and where it stands."""

    id: int
    box: tuple[slice, slice]
    core: np.ndarray  # bool, within box: the region's own pixels
    mask: np.ndarray  # bool, within box: core plus the fringe it owns
    hull: np.ndarray  # bool, within box: mask with holes filled
    area: int
    colour: np.ndarray  # mean RGB of the core, float
    parent: int = -1
    depth: int = 0
    children: list[int] = field(default_factory=list)


def similar_components(rgb: np.ndarray, valid: np.ndarray, levels: int = SIMILAR_LEVELS) -> np.ndarray:
    """(H, W) int labels of the 4-connected components of pixels joined to a neighbour of similar
    colour; pixels outside *valid* are each their own component."""
    height, width = valid.shape
    ids = np.arange(height * width).reshape(height, width)
    pixels = rgb.astype(np.int16)
    rows, cols = [], []
    for a, b, pa, pb, va, vb in (
        (ids[:, :-1], ids[:, 1:], pixels[:, :-1], pixels[:, 1:], valid[:, :-1], valid[:, 1:]),
        (ids[:-1], ids[1:], pixels[:-1], pixels[1:], valid[:-1], valid[1:]),
    ):
        join = (np.abs(pa - pb).max(axis=-1) <= levels) & va & vb
        rows.append(a[join])
        cols.append(b[join])
    row, col = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(row.size, np.int8), (row, col)), shape=(ids.size, ids.size))
    _, labels = connected_components(graph, directed=False)
    return labels.reshape(height, width)


def find_regions(rgb: np.ndarray, valid: np.ndarray) -> tuple[list[Region], np.ndarray, np.ndarray]:
    """``(regions, owner, fringe)``: the regions of *rgb* (H, W, 3 uint8) over the *valid* pixels,
    the (H, W) map of which region owns each pixel (-1 outside *valid*), and the fringe mask."""
    labels = similar_components(rgb, valid)
    areas = np.bincount(labels.ravel())
    min_area = max(MIN_REGION_PX, int(MIN_REGION_SHARE * valid.size))
    # A component without a single 2x2 block is a 1-px line: the anti-aliased seam along an edge
    # (a long edge of one coverage gives a long run of one mixed colour), not a shape.
    same_right = labels[:-1, :-1] == labels[:-1, 1:]
    blocks = same_right & (labels[:-1, :-1] == labels[1:, :-1]) & (labels[:-1, :-1] == labels[1:, 1:])
    has_block = np.bincount(labels[:-1, :-1][blocks], minlength=areas.size) > 0
    big = (areas >= min_area) & has_block
    core_map = big[labels] & valid
    if not core_map.any() and valid.any():  # all texture: the largest component is the one region
        core_map = (labels == np.bincount(labels[valid]).argmax()) & valid
    # Number the real regions 0..n-1, biggest first.
    core_labels = np.unique(labels[core_map])
    core_labels = core_labels[np.argsort(-areas[core_labels], kind="stable")]
    number = np.full(areas.size, -1, np.int64)
    number[core_labels] = np.arange(core_labels.size)
    core_id = np.where(core_map, number[labels], -1)
    # Each fringe pixel goes to the region of its nearest core pixel.
    _, (near_y, near_x) = ndimage.distance_transform_edt(~core_map, return_indices=True)
    owner = np.where(valid, core_id[near_y, near_x], -1)
    fringe = valid & ~core_map

    regions: list[Region] = []
    boxes = ndimage.find_objects(owner + 1)
    for index, box in enumerate(boxes):
        mask = owner[box] == index
        core = core_id[box] == index
        hull = ndimage.binary_fill_holes(np.pad(mask, 1))[1:-1, 1:-1]
        colour = rgb[box][core].astype(np.float64).mean(axis=0)
        regions.append(Region(index, box, core, mask, hull, int(core.sum()), colour))
    _nest(regions, owner.shape)
    return regions, owner, fringe


def _nest(regions: list[Region], shape: tuple[int, int]) -> None:
    """Set each region's parent (the smallest hull its pixels lie in) and depth."""
    painted = np.full(shape, -1, np.int64)
    for region in sorted(regions, key=lambda r: -int(r.hull.sum())):
        under = painted[region.box][region.mask]
        under = under[under >= 0]
        if under.size:
            region.parent = int(np.bincount(under).argmax())
            regions[region.parent].children.append(region.id)
            region.depth = regions[region.parent].depth + 1
        painted[region.box][region.hull] = region.id


def palette_groups(regions: list[Region], distance: float = PALETTE_DISTANCE) -> list[list[int]]:
    """Regions grouped by depth and colour, each group's regions biggest first, the groups in
    back-to-front order: shallower first, then bigger first."""
    groups: list[tuple[int, np.ndarray, list[int]]] = []  # (depth, mean colour, members)
    for region in sorted(regions, key=lambda r: (r.depth, -r.area)):
        for depth, colour, members in groups:
            if depth == region.depth and np.linalg.norm(colour - region.colour) <= distance:
                members.append(region.id)
                break
        else:
            groups.append((region.depth, region.colour, [region.id]))
    area = {id(members): sum(regions[i].area for i in members) for _, _, members in groups}
    groups.sort(key=lambda g: (g[0], -area[id(g[2])]))
    return [members for _, _, members in groups]
