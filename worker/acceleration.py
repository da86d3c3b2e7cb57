"""Lossless (and opt-in lossy) speed-ups for the GPU worker's Qwen-Image-Layered pipeline.

Usage in the GPU worker, once at start after the pipeline is loaded::

    from worker.acceleration import SpeedOptions, prepare

    options = SpeedOptions.for_device(device).replace(warmup_buckets=((640, 4),))  # configured buckets
    fast = prepare(pipe, options)   # picks attention, compiles the blocks, warms up (~2 min on a GPU)

per job, with the pipeline's own keyword arguments (callbacks for progress/cancel pass through)::

    out = fast(image=img, prompt=prompt, negative_prompt=" ", true_cfg_scale=4.0, layers=4,
               resolution=640, num_inference_steps=50, cfg_normalize=True, use_en_prompt=True,
               generator=g, callback_on_step_end=on_step)     # -> QwenImagePipelineOutput

and, when several queued jobs have an empty prompt, before running them::

    fast.caption_batch([job.image for job in queued], use_en_prompt=True, resolution=640)

which captions them together (on CUDA with the batch-invariant decoder, worker/accel/caption_decode.py:
each image gets the caption it would get alone) and caches the captions, so each job's `fast(...,
prompt="")` finds its caption without generating. On CPU `SpeedOptions.for_device("cpu")` is all off
and `fast(...)` is exactly `pipe(...)`. Measurements: bench/GPU_NOTES.md. Code: `worker/accel/`.
"""

from worker.accel.attention import BackendProbe, choose_backend, probe_backends
from worker.accel.captioner import Captioner, prompt_image_for, reference_caption_ids
from worker.accel.decomposer import FastDecomposer, prepare
from worker.accel.options import CAPTION_MAX_NEW_TOKENS, SpeedOptions
from worker.accel.step_cache import StepCache

__all__ = [
    "BackendProbe",
    "CAPTION_MAX_NEW_TOKENS",
    "Captioner",
    "FastDecomposer",
    "SpeedOptions",
    "StepCache",
    "choose_backend",
    "prepare",
    "probe_backends",
    "prompt_image_for",
    "reference_caption_ids",
]
