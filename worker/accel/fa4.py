"""FlashAttention-4 (the `flash-attn-4` package, CuTe DSL kernels) as an optional attention kernel.

Installed with the `fa4` extra. On an H200 at this model's shape (1 × ~9.7 k × 24 heads × 128, bf16)
it is ~10 % faster than the cuDNN kernel SDPA picks, and it takes the (batch, seq, heads, dim) layout
the transformer already has, so the transposed copies SDPA's kernels want disappear too.

Two things make it usable inside the regionally compiled blocks:

* The kernel is wrapped in a `torch.library` custom op with a fake (shape-only) implementation, so
  dynamo treats it as one opaque call instead of tracing into the CuTe DSL's Python (a graph break
  per block otherwise).
* The wheel's `.pth` file puts `nvidia_cutlass_dsl/dsl_packages` on `sys.path`; an install that skips
  `.pth` files (`pip install --target`) does not, so `available()` adds it the same way.

FA4 takes no attention mask: `attention()` is only called without one (a batch-1 job's joint
sequence has no padding); masked calls stay on SDPA (see joint_attention.py).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch

log = logging.getLogger(__name__)

OP_NAME = "layerq::fa4_attention"


def _add_cutlass_dsl_path() -> None:
    """What the nvidia-cutlass-dsl wheel's .pth file does, for installs that skipped it."""
    try:
        import nvidia_cutlass_dsl
    except ImportError:
        return
    for root in nvidia_cutlass_dsl.__path__:
        path = os.path.join(root, "dsl_packages")
        if os.path.isdir(path) and path not in sys.path:
            sys.path.insert(0, path)


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None when FA4 can run here, else why not (no CUDA, package missing, import error)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    major, _ = torch.cuda.get_device_capability()
    if major < 9:
        return f"FA4 needs sm_90 or newer, this GPU is sm_{major}x"
    _add_cutlass_dsl_path()
    try:
        from flash_attn.cute import flash_attn_func  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken native library
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    _register_op()
    return None


_op = None  # the registered custom op; a plain global, so dynamo reads it instead of tracing a cache


def _register_op():
    global _op
    if _op is not None:
        return _op
    from flash_attn.cute import flash_attn_func

    @torch.library.custom_op(OP_NAME, mutates_args=())
    def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = flash_attn_func(q, k, v, causal=False)
        return out[0] if isinstance(out, tuple) else out

    @fa4_attention.register_fake
    def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q.new_empty(q.shape[:-1] + v.shape[-1:])

    _op = fa4_attention
    return _op


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v for (batch, seq, heads, head_dim) bf16/fp16 CUDA tensors, no mask.
    Call `available()` first (it registers the op)."""
    return _op(q, k, v)
