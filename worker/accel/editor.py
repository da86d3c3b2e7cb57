"""`FastEditor`: the decomposition path's transformer switches on `QwenImageEditPlusPipeline`.

The edit model (Qwen-Image-Edit-2509) runs the same `QwenImageTransformer2DModel` blocks as the layered
one, without its extras (no additional time condition, 2-D RoPE instead of the layer RoPE), so every
transformer-level switch of `SpeedOptions` applies as it is: attention kernel (FA4 where it imports,
else SDPA's pick), GELU epilogue, real-arithmetic RoPE, regional compile with Inductor's kernel tuning,
fused Q/K/V, FP8. They change the pipeline's transformer in place, so the worker keeps calling the
pipeline itself (`worker.edit.edit_layer`) and the denoising loop stays the authors'.

What does not carry over, and why (`edit_options` turns it off):

* cached negative-prompt embeddings: the edit model encodes every prompt together with the condition
  image ("Picture 1: <image> …" through Qwen2.5-VL), so the negative prompt's embeddings differ per
  image; a cache keyed by the string would hand one image's embeddings to another;
* captions: an edit always has its instruction; the pipeline never captions;
* the lossy switches (fewer steps, step cache): edit jobs have no `quality` parameter.

Measurements: bench/edit_gpu.py, bench/GPU_NOTES.md ("Edit model").
"""

from __future__ import annotations

import logging
import time

import torch

from .decomposer import TransformerSwitches, _sync
from .options import SpeedOptions

log = logging.getLogger(__name__)

# The pipeline renders at ~1024² by area whatever the source size (calculate_dimensions), so these
# source sizes cover the square and a landscape shape: with dynamic shapes the second compiles nothing,
# it checks that a new aspect ratio reuses the compiled blocks.
WARMUP_SOURCES: tuple[tuple[int, int], ...] = ((640, 640), (640, 480))
# Output image and one condition image, each ~1024² by area; text ≈ template + condition-image tokens.
_RENDER_AREA = 1024 * 1024
_PROBE_TEXT_TOKENS = 256


def edit_options(options: SpeedOptions) -> SpeedOptions:
    """`options` without the switches that do not apply to editing (see the module docstring)."""
    return options.replace(
        cache_negative_embeds=False, caption_static_cache=False, caption_compile=False,
        caption_cache_entries=0, caption_batch_invariant=False, num_inference_steps=None,
        step_cache_interval=1, warmup_buckets=(),
    )


class FastEditor(TransformerSwitches):
    """The edit pipeline with `SpeedOptions`' transformer switches applied in place; see `prepare_edit`."""

    def _probe_seq_len(self) -> int:
        side = int(_RENDER_AREA**0.5) // (self.pipe.vae_scale_factor * 2)
        return 2 * side * side + _PROBE_TEXT_TOKENS

    def warmup(self, sources: tuple[tuple[int, int], ...] = WARMUP_SOURCES, steps: int = 2) -> dict:
        """A short edit per source size, so compiling happens now and not in a user's first job.

        Under `torch.inference_mode()`, as `edit_layer` calls the pipeline: a warm-up under `no_grad`
        leaves compiled guards the first real job fails, and it would recompile then (decomposition
        saw it on an H200, bench/GPU_NOTES.md run 4). Returns seconds per item."""
        from PIL import Image

        for width, height in sources:
            t0 = time.perf_counter()
            with torch.inference_mode():
                self.pipe(
                    image=[Image.new("RGB", (width, height), (200, 120, 60))],
                    prompt="warm-up: make the shape blue",
                    negative_prompt=" ",
                    true_cfg_scale=4.0,
                    num_inference_steps=steps,
                    generator=torch.Generator(device="cpu").manual_seed(0),
                    num_images_per_prompt=1,
                    output_type="pil",
                )
            _sync()
            self.warmup_s[f"edit {width}x{height}"] = time.perf_counter() - t0
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # give back what compilation and the warm-up shapes left cached
        return dict(self.warmup_s)


def prepare_edit(
    pipe, options: SpeedOptions | None = None, warmup_sources: tuple[tuple[int, int], ...] = WARMUP_SOURCES,
) -> FastEditor:
    """Apply `options` (default: `SpeedOptions.for_device(pipe's device)`, less what does not apply to
    editing) to a loaded `QwenImageEditPlusPipeline`, then warm up. All off on a CPU: nothing changes."""
    if options is None:
        options = SpeedOptions.for_device(pipe._execution_device)
    editor = FastEditor(pipe, edit_options(options)).apply()
    if warmup_sources and editor.options.any_enabled:
        editor.warmup(warmup_sources)
    return editor
