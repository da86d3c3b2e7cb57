"""`SpeedOptions`: every speed switch of the fast decomposition path, in one frozen place.

Lossless switches (same function, bf16 rounding aside) are on by default on CUDA; everything is off on
CPU so that CPU tests run the authors' code path unchanged. Lossy switches are always off unless asked
for; their measured quality cost is in bench/GPU_NOTES.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

# The Qwen-Image-Layered pipeline hard-codes 512 new tokens for its captions.
CAPTION_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class SpeedOptions:
    """Switches for `prepare()`; build one with `SpeedOptions.for_device(...)` and `dataclasses.replace`."""

    # --- lossless: transformer -------------------------------------------------------------------
    compile_blocks: bool = False
    """Regional torch.compile of the repeated `QwenImageTransformerBlock` (one compile for all 60)."""
    compile_dynamic: bool = True
    """Compile with symbolic sequence lengths, so new prompt lengths and aspect ratios never recompile."""
    real_rope: bool = False
    """Hand RoPE to the blocks as real (cos, sin) tables so compiled blocks fuse it (no complex ops)."""
    cuda_graphs: bool = False
    """Compile the blocks in "reduce-overhead" mode (CUDA graphs). Needs `compile_blocks`. Off and not
    measured: the host issues a compiled call in ~70 ms against ~380 ms of GPU work, and the loop never
    waits on the GPU, so launch cost is already hidden (bench/GPU_NOTES.md)."""
    compile_mode: str | None = None
    """torch.compile mode for the regional compile (e.g. "max-autotune-no-cudagraphs"); None: the default
    mode, or "reduce-overhead" when `cuda_graphs` is on. Needs `compile_blocks`; set with `cuda_graphs`,
    this mode wins. Off by default (measurement in bench/GPU_NOTES.md)."""
    compile_tune_kernels: bool = False
    """Inductor's coordinate-descent tuning of the compiled blocks' own kernels: same arithmetic, other
    launch shapes; −2.3 ms per step on an H200 for ~20 s more compiling at start (bench/GPU_NOTES.md)."""
    compile_deterministic: bool = False
    """Inductor's deterministic mode for the compiled blocks: no kernel choice by timing that changes
    the arithmetic, so every compile (another worker, a restart) runs the same bits. Off, two compiles
    gave jobs 1.3e-2 apart; on, bitwise equal at the same step time (H200, compile_repro_gpu.py).
    Where it meets `compile_tune_kernels`, deterministic mode wins (reduction kernels are not tuned)."""
    attention_backend: str | None = None
    """A diffusers attention backend name, "fa4" (FlashAttention-4, the optional `fa4` extra), "auto"
    (of the candidates that match SDPA on this GPU, FA4 included where it imports, the first in a fixed
    preference order unless another is ≥ 10 % faster: stable across workers, attention.py), or None (as is).
    Without FA4, "auto" keeps "native" on H200/H100 + torch 2.11 (SDPA's own pick is cuDNN's kernel)."""
    fused_qkv: bool = False
    """One GEMM per stream for the joint attention's q, k, v (worker/accel/joint_attention.py). Off: no
    gain inside the compiled blocks on an H200 (runs 9-10), though the GEMMs alone are 3-5 % faster."""
    fused_qk_norm_rope: bool = False
    """q/k RMSNorm + RoPE + the [text, image] concatenation of q, k, v as one Triton kernel per stream
    (worker/accel/qk_norm_rope.py; the authors' eager arithmetic). −24 ms per step on an H200 with SDPA,
    error vs the authors' call unchanged (bench/GPU_NOTES.md, qkfuse run 1). CPU runs its plain-PyTorch
    reference."""
    gelu_epilogue: bool = False
    """The feed-forward's fc1 + tanh-GELU as one cuBLASLt GEMM with a GELU epilogue (CUDA only):
    −12 ms per step on an H200 (run 9)."""
    cache_negative_embeds: bool = False
    """Encode each negative prompt once and pass `negative_prompt_embeds` afterwards."""

    # --- captions: same function; bf16 rounding differs (see captioner.py) -----------------------
    caption_static_cache: bool = False
    """Generate captions with a static KV cache (fixed shapes; required for compiled decoding)."""
    caption_compile: bool = False
    """Compile the decoding step (transformers' auto-compile with the static cache; CUDA only)."""
    caption_batch_sizes: tuple[int, ...] = (1, 8)
    """Batch shapes the captioner uses; a smaller batch is padded up to the next one (no recompiles)."""
    caption_max_cache_len: int = 2048
    """Static-cache length in tokens (prompt + 512 new); fixed so every call reuses one compiled graph.
    Real tokenizer: ~1.2 k at the 640 bucket, ~2.0 k at 1024. A longer input grows it and recompiles."""
    caption_batch_invariant: bool = False
    """Caption with our own greedy decode loop (worker/accel/caption_decode.py) instead of `generate`:
    each image prefilled alone, all decoded in a fixed batch of max(`caption_batch_sizes`) against a key
    length of `caption_max_cache_len` (a longer prompt: its own need rounded up to 1024), one CUDA-graph
    step per token. An image then gets the same tokens alone, in any batch and call after call (in bf16
    not necessarily the authors' tokens). `caption_static_cache` and `caption_compile` do not apply."""
    caption_cache_entries: int = 0
    """Size of the caption cache keyed by image content hash and language; 0 turns it off."""

    # --- warm-up ---------------------------------------------------------------------------------
    warmup_buckets: tuple[tuple[int, int], ...] = ()
    """(resolution, layers) pairs to run once at `prepare()` so the first job runs at steady speed."""

    # --- lossy (off unless asked for) ------------------------------------------------------------
    num_inference_steps: int | None = None
    """Override the number of denoising steps (fewer steps: faster, different output)."""
    step_cache_interval: int = 1
    """>1: inside `step_cache_window` run the transformer every k-th step and reuse its last output."""
    step_cache_window: tuple[float, float] = (0.2, 0.8)
    """Fraction of the schedule (start, end) where step caching may reuse outputs."""
    fp8_weights: bool = False
    """Every call on FP8 weights with dynamic per-row activations (worker/accel/fp8.py, no torchao)."""

    @classmethod
    def for_device(cls, device: str | torch.device) -> "SpeedOptions":
        """Lossless switches on for CUDA, everything off elsewhere."""
        if torch.device(device).type != "cuda":
            return cls()
        return cls(
            compile_blocks=True,
            real_rope=True,
            gelu_epilogue=True,
            fused_qk_norm_rope=True,
            compile_tune_kernels=True,
            # Exact jobs reproduce bit for bit on every worker of the same GPU and software.
            compile_deterministic=True,
            attention_backend="auto",
            cache_negative_embeds=True,
            # Batch-invariant captions (token-identical alone, in any batch, call after call; run 14):
            # the worker captions queued auto-caption jobs together with them.
            caption_batch_invariant=True,
            caption_cache_entries=1024,
        )

    @property
    def lossy(self) -> bool:
        return (
            self.num_inference_steps is not None or self.step_cache_interval > 1 or self.fp8_weights
        )

    @property
    def any_enabled(self) -> bool:
        return self != SpeedOptions(
            caption_batch_sizes=self.caption_batch_sizes,
            caption_max_cache_len=self.caption_max_cache_len,
            compile_dynamic=self.compile_dynamic,
            step_cache_window=self.step_cache_window,
        )

    def replace(self, **changes) -> "SpeedOptions":
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        """A one-line summary of the switches that differ from all-off."""
        base = SpeedOptions()
        diffs = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(base, f.name)
        ]
        return ", ".join(diffs) or "all off"
