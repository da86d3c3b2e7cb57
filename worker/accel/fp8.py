"""FP8 (e4m3) weights for `quality=fast` jobs, kept beside the bf16 weights that `exact` jobs use.

Our own small linear instead of torchao (the GPU workers do not have it, and its quantisation replaces
the bf16 weights, so a worker could not serve `exact` jobs after it):

* weights: e4m3 with one float32 scale per output row (the row's absolute maximum maps to 448, e4m3's
  largest finite value), made once at worker start from the bf16 weights, which stay untouched;
* activations of the token-wise linears (attention projections, feed-forward): quantised per row
  (per token) at run time the same way, then one `torch._scaled_mm` with both row-wise scales and
  bf16 output (FP8 tensor cores: sm_89+; row-wise scaling needs a build that supports it, probed at
  start);
* the modulation linears (`img_mod` / `txt_mod`, one token per image, a third of a block's weights):
  weight-only FP8, dequantised to the activation's dtype and multiplied as before. They cost ~nothing
  to compute, but holding and streaming them in FP8 is what halves a block's bytes;
* on a CPU (tests) and for the reference: the same quantisation, dequantised, and a plain matmul in
  float32 — what the GPU kernel computes up to its accumulation order.

A converted linear keeps its class's bf16 path as the default: `fp8_on` (a plain bool each module
carries, flipped for the duration of a fast job by `set_active`) selects the FP8 path. Compiled
blocks guard on that bool, so each path gets its own graph and an exact job runs the graph it ran
before FP8 existed. `convert` sets the bools on each module itself (instance attributes), never
leaving them to the class defaults: a graph compiled while `fp8_on` came from the class guards on
the module's `__dict__` not holding it, and the first flip (even back to False) broke that guard, so
the first exact job after the FP8 warm-up compiled a third graph (H200: 23.4 s instead of 14.4 s).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0
# A row of zeros gets this scale instead of 0 (its quantised values are 0 either way).
_MIN_AMAX = 1e-12
# Attribute names on a converted module; also how the streamer tells the FP8 copy from the bf16 one.
WEIGHT, SCALE = "weight_fp8", "weight_fp8_scale"


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 tensor, float32 scale per row) with t ≈ q.float() * scale[:, None]."""
    t32 = t.float()
    amax = t32.abs().amax(dim=-1, keepdim=True).clamp(min=_MIN_AMAX)
    scale = amax / E4M3_MAX
    q = (t32 / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3)
    return q, scale.squeeze(-1)


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.unsqueeze(-1)


def scaled_mm_available(device: torch.device | str) -> str | None:
    """None when row-wise FP8 GEMMs run on `device`, else why not (a sentence for the plan)."""
    device = torch.device(device)
    if device.type != "cuda":
        return "no CUDA device (the CPU runs FP8 only as the dequantising reference)"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"this GPU (sm_{major}{minor}) has no FP8 matrix units (sm_89+)"
    try:
        a, sa = quantize_rows(torch.randn(32, 64, device=device))
        b, sb = quantize_rows(torch.randn(48, 64, device=device))
        torch._scaled_mm(a, b.t(), scale_a=sa[:, None], scale_b=sb[None, :], out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as exc:
        return f"row-wise FP8 GEMM not supported by this torch build: {str(exc)[:200]}"
    return None


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               fast_accum: bool = True) -> torch.Tensor:
    """x @ W.T + bias with W in FP8 (per-row scales) and x quantised per row on the fly."""
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    x8, x_scale = quantize_rows(flat)
    if x.is_cuda:
        out = torch._scaled_mm(
            x8, w8.t(), scale_a=x_scale[:, None], scale_b=w_scale[None, :], out_dtype=x.dtype,
            use_fast_accum=fast_accum,
        )
        if bias is not None:
            out = out + bias  # after the GEMM: fused by the compiled block either way
    else:
        out = dequantize_rows(x8, x_scale) @ dequantize_rows(w8, w_scale).t()
        if bias is not None:
            out = out + bias.float()
        out = out.to(x.dtype)
    return out.reshape(*shape[:-1], w8.shape[0])


def weight_only_linear(x: torch.Tensor, w8: torch.Tensor, w_scale: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    """FP8 weights dequantised to x's dtype, activations as they are (the one-token modulation)."""
    w = (w8.to(torch.float32) * w_scale[:, None]).to(x.dtype)
    return nn.functional.linear(x, w, bias)


class Fp8Linear(nn.Linear):
    """An `nn.Linear` that also holds an FP8 copy of its weight; `fp8_on` picks the path.

    Made by `convert` (the module's class is swapped in place, so its name in the block, its bf16
    weight and everything that refers to it stay as they were)."""

    # Class defaults for reading only; `convert` sets each on the instance (see the module docstring).
    fp8_on: bool = False
    fp8_weight_only: bool = False
    fp8_fast_accum: bool = True

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.fp8_on:
            return nn.functional.linear(input, self.weight, self.bias)  # nn.Linear.forward, unchanged
        w8, scale = getattr(self, WEIGHT), getattr(self, SCALE)
        if self.fp8_weight_only:
            return weight_only_linear(input, w8, scale, self.bias)
        return fp8_linear(input, w8, scale, self.bias, self.fp8_fast_accum)


def block_linears(block: nn.Module) -> list[tuple[str, nn.Linear]]:
    """Every linear layer of a transformer block (the ones FP8 covers), with its name."""
    return [(n, m) for n, m in block.named_modules() if isinstance(m, nn.Linear)]


def is_modulation(name: str) -> bool:
    """diffusers' QwenImageTransformerBlock names its one-token AdaLN linears `img_mod.1` / `txt_mod.1`."""
    return "_mod" in name


def fp8_bytes(block: nn.Module) -> tuple[int, int]:
    """(bf16-weight bytes the FP8 copy stands in for, bytes of the FP8 copy: e4m3 weights + scales)."""
    replaced = copy = 0
    for _, m in block_linears(block):
        w = m.weight
        replaced += w.numel() * w.element_size()
        copy += w.numel() + 4 * w.shape[0]
    return replaced, copy


def convert(block: nn.Module, device: torch.device | str | None = None) -> list[Fp8Linear]:
    """Add an FP8 copy to every linear of `block` (quantised from its current weight, on `device` or
    where the weight is) and swap its class to `Fp8Linear`; returns the converted modules. The FP8
    tensors are non-persistent buffers: state dicts never see them, and the memory plan counts them
    apart (`fp8_bytes`), having read the bf16 model before they exist."""
    out = []
    with torch.inference_mode(False), torch.no_grad():
        for name, m in block_linears(block):
            w = m.weight.data
            if device is not None:
                w = w.to(device)
            q, scale = quantize_rows(w)
            m.__class__ = Fp8Linear
            # Buffers, like the weights: compiled blocks then share one graph across all 60 blocks.
            m.register_buffer(WEIGHT, q, persistent=False)
            m.register_buffer(SCALE, scale, persistent=False)
            m.fp8_weight_only = is_modulation(name)
            # Instance attributes from now on, so later flips never change where dynamo finds them.
            m.fp8_on = False
            m.fp8_fast_accum = Fp8Linear.fp8_fast_accum
            out.append(m)
    return out


def converted(module: nn.Module) -> list[Fp8Linear]:
    return [m for m in module.modules() if isinstance(m, Fp8Linear)]


def fp8_tensors(modules: list[Fp8Linear]) -> list[torch.Tensor]:
    return [t for m in modules for t in (getattr(m, WEIGHT), getattr(m, SCALE))]


def set_active(module: nn.Module, on: bool) -> None:
    for m in converted(module):
        m.fp8_on = on


@contextlib.contextmanager
def active(module: nn.Module, on: bool) -> Iterator[None]:
    """FP8 weights for the calls inside the block when `on` (a fast job); bf16 otherwise and after."""
    set_active(module, on)
    try:
        yield
    finally:
        set_active(module, False)


def describe(modules: list[Any]) -> str:
    token = sum(not m.fp8_weight_only for m in modules)
    return f"{token} token-wise linears FP8×FP8, {len(modules) - token} modulation linears weight-only FP8"
