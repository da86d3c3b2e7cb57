"""`decompose_flat` and the pipeline-shaped wrapper the worker loads for `--model classic`.

A baseline, not a model: it finds regions of near-constant colour and stacks them back to front by
what encloses what and by area. On flat posters (logos, icons, flat illustration, text on plain
backgrounds) the layers mean something; on photographs and painted pictures it cuts along colour
edges and its layers are arbitrary. It never invents what lies behind a shape beyond filling a
region's holes with the region's nearest colour.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from layerq.params import DecomposeParams
from worker.exports import composite
from worker.stepping import OnStep, ShouldStop, stop_if_asked

from .layering import merge_groups, paint_layers
from .regions import find_regions, palette_groups

log = logging.getLogger(__name__)

#: The `--model` value that selects this decomposer.
CLASSIC_MODEL = "classic"
#: The composite may miss the input by at most this many levels per channel before a pixel is repaired.
MAX_COMPOSITE_ERROR = 1


def decompose_flat(image: Image.Image, max_layers: int) -> list[Image.Image]:
    """*image* as at most *max_layers* RGBA layers of its size, bottom first, whose composite equals
    the image within :data:`MAX_COMPOSITE_ERROR` levels (fully transparent input pixels stay
    transparent in every layer). Fewer layers come back when the picture has fewer region groups.
    """
    rgba = np.asarray(image.convert("RGBA"))
    rgb, valid = rgba[..., :3], rgba[..., 3] > 0
    if not valid.any():
        return [Image.new("RGBA", image.size, (0, 0, 0, 0))]
    regions, _, fringe = find_regions(rgb, valid)
    groups = merge_groups(palette_groups(regions), regions, max_layers)
    layers = paint_layers(rgb, valid, regions, fringe, groups)
    _repair(layers, rgba)
    return [Image.fromarray(layer, "RGBA") for layer in layers]


def _repair(layers: list[np.ndarray], rgba: np.ndarray) -> None:
    """Where the composite misses the input by more than MAX_COMPOSITE_ERROR, make the topmost layer
    that shows there opaque in the input's colour (in place); the input's alpha is put back last."""
    flat = np.asarray(composite([Image.fromarray(layer, "RGBA") for layer in layers])).astype(np.int16)
    wrong = np.abs(flat - rgba.astype(np.int16))[..., :3].max(-1) > MAX_COMPOSITE_ERROR
    wrong &= rgba[..., 3] > 0
    if wrong.any():
        top = np.full(wrong.shape, 0, np.int64)
        for index, layer in enumerate(layers):
            top[layer[..., 3] > 0] = index
        for index, layer in enumerate(layers):
            here = wrong & (top == index)
            layer[here, :3] = rgba[here, :3]
            layer[here, 3] = 255
        log.debug("classic: repaired %d of %d pixels", int(wrong.sum()), wrong.size)
    # A partly transparent input pixel: the topmost layer there carries the input's alpha (the
    # layers below it are made transparent), so the composite keeps the input's transparency.
    partial = (rgba[..., 3] > 0) & (rgba[..., 3] < 255)
    if partial.any():
        top = np.full(partial.shape, 0, np.int64)
        for index, layer in enumerate(layers):
            top[layer[..., 3] > 0] = index
        for index, layer in enumerate(layers):
            mine = partial & (top == index)
            layer[mine] = rgba[mine]
            layer[partial & (top != index), 3] = 0


@dataclass
class ClassicDecomposer:
    """Shaped like `worker.pipeline.DecomposePipeline` (load once, `run` per job), so the worker
    uses it unchanged when started with `--model classic`."""

    model_id: str = CLASSIC_MODEL
    device: str = "cpu"
    load_s: float = 0.0
    warmup_s: float = 0.0
    runner: None = field(default=None)

    @classmethod
    def load(cls, model: str = CLASSIC_MODEL, **_: object) -> ClassicDecomposer:
        """Nothing to load; the worker's device and speed-up settings do not apply."""
        return cls(model_id=model)

    def run(
        self,
        image: Image.Image,
        params: DecomposeParams,
        on_step: OnStep | None = None,
        should_stop: ShouldStop | None = None,
    ) -> list[Image.Image]:
        """Decompose *image* into at most ``params.layer_count`` layers, bottom first, each of
        `output_size(...)` like the model's, so a job's layers have one size whatever the model.
        Progress is reported as two steps (regions found, layers painted); *should_stop* is polled
        between them. Model-only parameters (steps, guidance, prompt, seed) do not apply."""
        from worker.pipeline import output_size

        started = time.monotonic()
        size = output_size(image.width, image.height, params.resolution)
        work = image.convert("RGBA")
        if work.size != size:
            work = work.resize(size, Image.Resampling.LANCZOS)
        stop_if_asked(should_stop)
        if on_step is not None:
            on_step(1, 2)
        layers = decompose_flat(work, params.layer_count)
        stop_if_asked(should_stop)
        if on_step is not None:
            on_step(2, 2)
        log.info("classic: %d layers in %.2f s", len(layers), time.monotonic() - started)
        return layers
