"""A QwenImageLayeredPipeline with random weights, built in-process from configs (no download).

Used by bench/gpu_bench.py and tests/test_acceleration.py. The recipe lives in `worker.models` (one
builder for the tiny, small and full sizes of both pipeline kinds); this module keeps the benchmark's
names.

`build_pipeline("full", device="cuda")` builds the real architecture (20.4 B transformer, 8.3 B
Qwen2.5-VL text encoder, RGBA VAE) directly on the GPU in bf16, for timing and memory: the shapes are
the ones DESIGN.md lists. `build_pipeline("small")` builds a scaled-down model with the same classes so
that the benchmark script and the acceleration tests run on a CPU in seconds.

With random weights a caption never meets its end token; the text encoder's end token is unset so
every caption runs the full `max_new_tokens`, as the reference measurement did.
"""

from __future__ import annotations

import torch

from worker.models.build import SIZES, build_layered
from worker.models.text_encoder import build_processor
from worker.models.tokenizer import build_tokenizer

__all__ = ["SIZES", "build_pipeline", "build_processor", "build_tokenizer", "sample_image"]


def build_pipeline(size: str = "small", device: str | torch.device = "cpu", dtype=None, seed: int = 0):
    """Build a `QwenImageLayeredPipeline` with random weights directly on `device`.

    `dtype` defaults to bf16 on CUDA and fp32 on CPU. Weights are drawn from `seed`, so the same call
    builds the same model on the same device type.
    """
    return build_layered(size, device=device, dtype=dtype, seed=seed)


def sample_image(width: int = 640, height: int = 640, seed: int = 0):
    """A deterministic RGBA test image with some structure (gradients and blocks)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgba[..., 2] = rng.integers(0, 255)
    rgba[..., 3] = 255
    for _ in range(4):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        rgba[y0 : y0 + height // 4, x0 : x0 + width // 4, :3] = rng.integers(0, 255, size=3)
    return Image.fromarray(rgba, "RGBA")
