"""Build the random-weight pipelines: one code path for every size and both pipeline kinds.

`build_layered(size)` → `QwenImageLayeredPipeline`, `build_edit(size)` → `QwenImageEditPlusPipeline`.
Sizes: `tiny` (CPU, saved and cached on disk by `ensure_cached`), `small` (CPU, in-process, for the
acceleration tests), `full` (the real architecture: build on a GPU, bf16). The `full` shapes are the ones
DESIGN.md lists; the GPU measurements depend on them, so change them only on purpose.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from worker.models import text_encoder as te
from worker.models.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

Kind = Literal["layered", "edit"]
Size = Literal["tiny", "small", "full"]

# Bump whenever a recipe below changes: cached model directories carry it in their name, so a worker
# with a stale cached model builds the new one instead of loading the old.
MODEL_RECIPE_VERSION = "6"
STAMP_FILE = "layerq-model.json"
SEED = 0

# FlowMatchEulerDiscreteScheduler config as the Qwen-Image family ships it (scheduler_config.json of
# Qwen/Qwen-Image and the Edit models); the layered pipeline passes its own `mu` and `sigmas`.
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}


@dataclass(frozen=True)
class ModelSize:
    """Transformer, VAE and text-encoder dimensions for one size, shared by both pipeline kinds."""

    transformer: dict[str, Any]
    vae: dict[str, Any]  # without input_channels: the kind decides (RGBA or RGB)
    text_encoder: te.TextEncoderSize
    # Default init leaves a small transformer's outputs near zero; redraw its matrices with this std so
    # numerical differences in the acceleration tests are visible. None: keep the default init.
    transformer_init_std: float | None = None


_Z = 8  # tiny/small latent channels; must not be 4 (the layered pipeline takes a 4-channel tensor for latents)

SIZES: dict[str, ModelSize] = {
    # QwenImageTransformer2DModel and AutoencoderKLQwenImage defaults: 20.4 B transformer, z_dim 16.
    "full": ModelSize(transformer={}, vae={}, text_encoder=te.FULL),
    "small": ModelSize(
        transformer=dict(num_layers=2, attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64,
                         axes_dims_rope=(8, 12, 12), in_channels=4 * _Z, out_channels=_Z),
        vae=dict(base_dim=8, z_dim=_Z, dim_mult=[1, 1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, False, False, False],
                 latents_mean=[0.0] * _Z, latents_std=[1.0] * _Z),
        text_encoder=te.SMALL,
        transformer_init_std=0.2,
    ),
    "tiny": ModelSize(
        transformer=dict(
            patch_size=2,
            in_channels=4 * _Z,  # 2x2 packed latent patches
            out_channels=_Z,
            num_layers=2,
            # Attention over all tokens dominates a step: 2 heads of 16 keep 50 CFG steps around a
            # second on a CPU.
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=te.TINY.text["hidden_size"],
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, like (16, 56, 56) for 128
        ),
        # Four down stages → 16x spatial compression: sequences 4x shorter than with the real 8x VAE,
        # which keeps a job at seconds on a CPU (two stages made a layered job ~90 s). The
        # full-resolution stages are 2 channels wide: their RMS norms dominate the decoder's CPU time.
        vae=dict(base_dim=2, z_dim=_Z, dim_mult=[1, 2, 4, 8, 8], num_res_blocks=1,
                 temperal_downsample=[False, True, True, True],  # the real [False, True, True] plus one
                 latents_mean=[0.0] * _Z, latents_std=[1.0] * _Z),
        text_encoder=te.TINY,
    ),
}

# What each pipeline kind adds to a size: the layered model's extra time condition and 3-D layer RoPE
# and an RGBA VAE; the edit model is the plain transformer with an RGB VAE.
_KIND_TRANSFORMER: dict[str, dict[str, Any]] = {
    "layered": dict(use_additional_t_cond=True, use_layer3d_rope=True),
    "edit": {},
}
_KIND_VAE: dict[str, dict[str, Any]] = {"layered": dict(input_channels=4), "edit": dict(input_channels=3)}


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _resolve(device: Any, dtype: Any) -> tuple[Any, Any]:
    import torch

    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return device, dtype


def build_components(kind: Kind, size: Size = "tiny", device: Any = "cpu", dtype: Any = None,
                     seed: int = SEED) -> dict[str, Any]:
    """The pipeline's components with seeded random weights, built directly on `device`.

    `dtype` defaults to bf16 on CUDA and fp32 elsewhere. The `meta` device builds the shapes without
    memory (tests count the full model's parameters that way).
    """
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    spec = SIZES[size]
    device, dtype = _resolve(device, dtype)
    tokenizer = build_tokenizer()
    processor = te.build_processor(tokenizer, spec.text_encoder.image_max_pixels)
    te_config = te.text_encoder_config(spec.text_encoder, tokenizer)
    torch.manual_seed(seed)
    # Under the device context every parameter is allocated where it will live: a 29 B model builds on a
    # GPU in seconds instead of being initialised on the CPU and copied.
    with device, _default_dtype(dtype):
        transformer = QwenImageTransformer2DModel(**spec.transformer, **_KIND_TRANSFORMER[kind])
        vae = AutoencoderKLQwenImage(**spec.vae, **_KIND_VAE[kind])
        text_encoder = Qwen2_5_VLForConditionalGeneration(te_config)
    if spec.transformer_init_std is not None and device.type != "meta":
        with torch.no_grad():
            for p in transformer.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, spec.transformer_init_std)
    for m in (transformer, vae, text_encoder):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    te.finish_generation_config(text_encoder, spec.text_encoder, tokenizer)
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": processor,
        "transformer": transformer,
    }


def _pipeline_class(kind: Kind) -> Any:
    from diffusers import QwenImageEditPlusPipeline, QwenImageLayeredPipeline

    return {"layered": QwenImageLayeredPipeline, "edit": QwenImageEditPlusPipeline}[kind]


def _build(kind: Kind, size: Size, device: Any, dtype: Any, seed: int) -> Any:
    pipe = _pipeline_class(kind)(**build_components(kind, size, device, dtype, seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_layered(size: Size = "tiny", device: Any = "cpu", dtype: Any = None, seed: int = SEED) -> Any:
    """A `QwenImageLayeredPipeline` (Qwen/Qwen-Image-Layered architecture) with random weights."""
    return _build("layered", size, device, dtype, seed)


def build_edit(size: Size = "tiny", device: Any = "cpu", dtype: Any = None, seed: int = SEED) -> Any:
    """A `QwenImageEditPlusPipeline` (Qwen/Qwen-Image-Edit-2509 architecture) with random weights."""
    return _build("edit", size, device, dtype, seed)


def save(kind: Kind, dest: Path, size: Size = "tiny") -> Path:
    """Build on the CPU (deterministic: fixed seed) and `save_pretrained` into `dest`, with a stamp."""
    started = time.monotonic()
    dest = Path(dest)
    pipe = _build(kind, size, "cpu", None, SEED)
    pipe.save_pretrained(dest)
    stamp = {"kind": kind, "size": size, "recipe_version": MODEL_RECIPE_VERSION, "seed": SEED}
    (dest / STAMP_FILE).write_text(json.dumps(stamp, indent=1) + "\n")
    log.info("built %s %s model in %s (%.1f s)", size, kind, dest, time.monotonic() - started)
    return dest


def cache_name(kind: Kind, size: Size = "tiny") -> str:
    # The layered tiny model keeps its historical name `tiny-<version>`.
    return f"{size}-{MODEL_RECIPE_VERSION}" if kind == "layered" else f"{size}-{kind}-{MODEL_RECIPE_VERSION}"


def ensure_cached(cache_dir: Path, kind: Kind = "layered", size: Size = "tiny") -> Path:
    """Return `cache_dir/<cache_name>`, building it first if absent.

    Built into a private temporary directory next to the target and moved into place with one
    `os.rename`, so a reader never sees a half-written model; when two processes race, one rename
    wins and the loser discards its copy.
    """
    cache_dir = Path(cache_dir).expanduser()
    name = cache_name(kind, size)
    final = cache_dir / name
    if (final / STAMP_FILE).is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        save(kind, tmp, size)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by a worker and its tests
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its build into place first (the target now exists, non-empty).
            if not (final / STAMP_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
