"""From regions to RGBA layers: groups merged down to the layer budget, each layer painted with
its regions' hulls (occluded parts filled), soft edges solved into alpha.

Every layer is opaque over its regions' hulls: a region's own pixels keep their colour, its holes
(where the regions it encloses lie, drawn by later layers) take the colour of the nearest pixel of
the region. A fringe pixel (an anti-aliased edge) goes to the topmost region whose core lies within
`SOFT_EDGE_PX` of it, as colour C at alpha a over what the layers below show there (B): a is P's
projection onto the segment B→C, raised where needed so that C = (P - (1 - a) B) / a stays in
range, so the composite reproduces P. Whatever still misses by more than a level (three colours
meeting at one pixel, a region wrongly nested) is made opaque in the topmost layer there.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .regions import Region

#: How far (px) from a region's own pixels an anti-aliased edge pixel may be, to become its soft edge.
SOFT_EDGE_PX = 2
_DISK = ndimage.generate_binary_structure(2, 1)


def merge_groups(groups: list[list[int]], regions: list[Region], max_layers: int) -> list[list[int]]:
    """Merge neighbouring groups (in back-to-front order) until at most *max_layers* remain: the
    smallest group joins whichever neighbour is closer in colour. Merging neighbours keeps the
    composite: the merged layer is the two flattened."""
    groups = [list(g) for g in groups]

    def area(group: list[int]) -> int:
        return sum(regions[i].area for i in group)

    def colour(group: list[int]) -> np.ndarray:
        weights = np.array([regions[i].area for i in group], np.float64)
        return (np.array([regions[i].colour for i in group]) * weights[:, None]).sum(0) / max(weights.sum(), 1)

    while len(groups) > max(1, max_layers):
        small = min(range(len(groups)), key=lambda k: area(groups[k]))
        neighbours = [k for k in (small - 1, small + 1) if 0 <= k < len(groups)]
        target = min(neighbours, key=lambda k: np.linalg.norm(colour(groups[k]) - colour(groups[small])))
        low, high = sorted((small, target))
        groups[low:high + 1] = [groups[low] + groups[high]]
    return groups


def paint_layers(
    rgb: np.ndarray, valid: np.ndarray, regions: list[Region], fringe: np.ndarray, groups: list[list[int]],
) -> list[np.ndarray]:
    """The (H, W, 4) uint8 layers, bottom first, one per group."""
    height, width = valid.shape
    order = [i for group in groups for i in sorted(group, key=lambda i: (regions[i].depth, -regions[i].area))]
    # Which region draws each fringe pixel's soft edge: the topmost one near it.
    soft_owner = np.full((height, width), -1, np.int64)
    for index in order:
        box, grown = _grown(regions[index], (height, width))
        soft_owner[box][grown & fringe[box]] = index

    target = rgb.astype(np.float64)
    below = np.zeros((height, width, 4), np.float64)  # composite so far, straight alpha 0..1
    layers: list[np.ndarray] = []
    group_of = {i: g for g, group in enumerate(groups) for i in group}
    current = -1
    layer = np.zeros((height, width, 4), np.float64)
    for index in order:
        if group_of[index] != current:
            if current >= 0:
                layers.append(layer)
            current, layer = group_of[index], np.zeros((height, width, 4), np.float64)
        region = regions[index]
        if index == order[0]:  # the backdrop spans the picture, like the model's bottom layer
            box = (slice(0, height), slice(0, width))
        else:
            box, _ = _grown(region, (height, width))
        patch = _region_patch(region, box, target, fringe, soft_owner, below, backdrop=index == order[0])
        _over(layer[box], patch)
        _over(below[box], patch)
    layers.append(layer)
    out = [np.clip(np.floor(np.concatenate([l[..., :3], l[..., 3:] * 255], -1) + 0.5), 0, 255).astype(np.uint8)
           for l in layers]
    for layer_pixels in out:
        layer_pixels[~valid] = 0
    return out


def _grown(region: Region, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """The region's box grown by SOFT_EDGE_PX (clipped to the picture) and its core dilated by as
    much, within that box."""
    ys, xs = region.box
    y0, y1 = max(0, ys.start - SOFT_EDGE_PX), min(shape[0], ys.stop + SOFT_EDGE_PX)
    x0, x1 = max(0, xs.start - SOFT_EDGE_PX), min(shape[1], xs.stop + SOFT_EDGE_PX)
    core = np.zeros((y1 - y0, x1 - x0), bool)
    core[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = region.core
    return (slice(y0, y1), slice(x0, x1)), ndimage.binary_dilation(core, _DISK, iterations=SOFT_EDGE_PX)


def _region_patch(
    region: Region, box: tuple[slice, slice], target: np.ndarray, fringe: np.ndarray,
    soft_owner: np.ndarray, below: np.ndarray, backdrop: bool = False,
) -> np.ndarray:
    """The region's RGBA (straight, 0..1 alpha) over *box* (its grown box). The *backdrop* (the
    bottom region) covers the whole box: whatever lies on it is drawn by later layers."""
    ys, xs = region.box
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start)
    offset = (ys.start - box[0].start, xs.start - box[1].start)
    inner = (slice(offset[0], offset[0] + region.core.shape[0]), slice(offset[1], offset[1] + region.core.shape[1]))

    def lift(mask: np.ndarray) -> np.ndarray:
        full = np.zeros(shape, bool)
        full[inner] = mask
        return full

    core, mask, hull = lift(region.core), lift(region.mask), lift(region.hull)
    if backdrop:
        hull = np.ones(shape, bool)
    pixels = target[box]
    # For holes and for fringe handed to another region's edge: the core's colours spread smoothly.
    nearest = smooth_fill(pixels, core)
    soft_here = soft_owner[box] == region.id
    loose = fringe[box] & mask & (soft_owner[box] < 0)  # fringe no soft edge claims: keep its colour
    patch = np.zeros((*shape, 4), np.float64)
    patch[..., :3] = np.where((core | loose)[..., None], pixels, nearest)
    patch[..., 3] = hull
    # Soft edges: solve colour and alpha against what lies below.
    soft = soft_here & fringe[box]
    if soft.any():
        base = below[box][soft]
        p, c = pixels[soft], nearest[soft]
        b = base[:, :3]
        covered = base[:, 3] > 0.999
        d = c - b
        a = np.where(covered, np.clip(((p - b) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0, 1), 1.0)
        # Smallest alpha that keeps the solved colour within 0..255 in every channel.
        up = np.where(p > b, (p - b) / np.maximum(255 - b, 1e-9), (b - p) / np.maximum(b, 1e-9))
        a = np.where(covered, np.maximum(a, up.max(-1)), 1.0)
        a = np.clip(np.floor(a * 255 + 0.5) / 255, 0, 1)
        colour = np.where(a[:, None] > 0, (p - (1 - a[:, None]) * b) / np.maximum(a[:, None], 1e-9), c)
        patch[soft, :3] = np.clip(colour, 0, 255)
        patch[soft, 3] = a
    return patch


def smooth_fill(pixels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """*pixels* (H, W, C float) with the pixels outside *known* filled smoothly from the known ones
    (push-pull: average the known pixels down a pyramid of 2x2 blocks, then fill each level's gaps
    from the coarser one), so a gradient continues under a shape instead of smearing into rays."""
    if known.all() or not known.any():
        return pixels.copy()
    weight = known.astype(np.float64)
    levels: list[tuple[np.ndarray, np.ndarray]] = []
    colour = pixels * weight[..., None]
    while True:
        levels.append((colour, weight))
        if min(weight.shape) <= 1:
            break
        height, width = weight.shape
        ph, pw = height % 2, width % 2
        colour = np.pad(colour, ((0, ph), (0, pw), (0, 0)))
        weight = np.pad(weight, ((0, ph), (0, pw)))
        colour = colour.reshape(colour.shape[0] // 2, 2, colour.shape[1] // 2, 2, -1).sum((1, 3))
        weight = weight.reshape(weight.shape[0] // 2, 2, weight.shape[1] // 2, 2).sum((1, 3))
    # Pull: from the coarsest level up, a pixel without known weight takes its parent's mean.
    mean = levels[-1][0] / np.maximum(levels[-1][1], 1e-9)[..., None]
    for colour, weight in reversed(levels[:-1]):
        height, width = weight.shape
        parent = _upsampled(mean, height, width)
        own = colour / np.maximum(weight, 1e-9)[..., None]
        blend = np.clip(weight, 0, 1)[..., None]
        mean = own * blend + parent * (1 - blend)
    return np.where(known[..., None], pixels, mean)


def _upsampled(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
    """*coarse* (h, w, C) doubled to (height, width) by bilinear interpolation between block centres."""
    ch, cw = coarse.shape[:2]
    ys = np.clip((np.arange(height) + 0.5) / 2 - 0.5, 0, ch - 1)
    xs = np.clip((np.arange(width) + 0.5) / 2 - 0.5, 0, cw - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, ch - 1), np.minimum(x0 + 1, cw - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return top * (1 - fy) + bottom * fy


def _over(dst: np.ndarray, src: np.ndarray) -> None:
    """*src* over *dst* in place (straight alpha, colour 0..255, alpha 0..1)."""
    sa, da = src[..., 3:], dst[..., 3:]
    out_a = sa + da * (1 - sa)
    safe = np.where(out_a > 0, out_a, 1)
    dst[..., :3] = np.where(out_a > 0, (src[..., :3] * sa + dst[..., :3] * da * (1 - sa)) / safe, 0)
    dst[..., 3:] = out_a
