"""Which queue a decompose job goes to: that of the smallest GPU memory class in the fleet's
configuration (`LAYERQ_MEMORY_CLASSES`) that fits the job (layerq/memory_classes.py).

A job that no configured class fits is refused here, at once, naming the parameter to change,
rather than left to run out of memory on a worker. A configured class with no live worker at the
moment is not a refusal: its jobs wait in its queue as jobs always wait for workers (rolling
restarts, autoscaling from zero), and workers of larger classes take them too."""

from __future__ import annotations

from layerq.config import Settings
from layerq.errors import ExceedsGpuMemory
from layerq.memory_classes import fits, max_layers_that_fit, need_gib, smallest_fitting
from layerq.params import DecomposeParams
from layerq.queues import decompose_queue


def decompose_queue_for(params: DecomposeParams, settings: Settings, field: str = "params") -> str:
    """The queue of the job with these parameters; ExceedsGpuMemory naming `<field>.<param>` when no
    class of the fleet fits it."""
    fleet = settings.fleet_memory_classes
    resolution, layers, caption = params.resolution, params.layer_count, not params.prompt.strip()
    cls = smallest_fitting(fleet, resolution, layers, caption)
    if cls is not None:
        return decompose_queue(cls)
    largest = fleet[0]
    what = (f"resolution {resolution} with {layers} layers{' and an auto-caption' if caption else ''} needs about "
            f"{need_gib(resolution, layers, caption):.0f} GiB of GPU memory; this fleet's largest workers are "
            f"{largest.label} (LAYERQ_MEMORY_CLASSES={settings.memory_classes})")
    layer_field = f"{field}.max_layers" if params.layers == "auto" else f"{field}.layers"
    most = max_layers_that_fit(largest, resolution, caption)
    if most is not None:
        raise ExceedsGpuMemory(f"{what}: ask for at most {most} layers at resolution {resolution}", field=layer_field)
    if caption and max_layers_that_fit(largest, resolution, False) is not None:
        raise ExceedsGpuMemory(f"{what}: an auto-caption holds the text encoder on the GPU; give a `prompt`",
                               field=f"{field}.prompt")
    smaller = max_layers_that_fit(largest, 640, caption) if resolution != 640 else None
    hint = f"resolution 640 fits up to {smaller} layers" if smaller else "no job of this kind fits"
    if not smaller and caption and fits(largest, 640, 2, False):
        hint = "only jobs at resolution 640 with a `prompt` fit"
    raise ExceedsGpuMemory(f"{what}: {hint}", field=f"{field}.resolution")
