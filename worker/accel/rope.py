"""Rotary embeddings in real arithmetic, so the compiled blocks can fuse them.

diffusers applies Qwen-Image's RoPE as a complex multiply (`view_as_complex` → `*` → `view_as_real`).
TorchInductor generates no code for complex tensors, so inside a compiled block RoPE falls back to
eager kernels: four extra float32 passes over each query and key. Here the transformer's RoPE tables
are handed to the blocks as real (cos, sin) pairs and the rotation is written with real multiplies —
the same float32 formula, (a + ib)(c + id) = (ac − bd) + i(ad + bc), which Inductor fuses with the
QK-norm before it.

diffusers' `apply_rotary_emb_qwen` is looked up by name from the module at call time, so it is
replaced there by a function that takes the real path only for real tables (ours) and calls the
original for complex ones: every other Qwen-Image model in the process keeps its exact behaviour.
"""

from __future__ import annotations

import torch

try:
    from diffusers.models.transformers import transformer_qwenimage as _tq
except ImportError:  # pragma: no cover - diffusers without Qwen-Image
    _tq = None

_ORIGINAL = getattr(_tq, "apply_rotary_emb_qwen", None)


def apply_rotary_emb_qwen(x, freqs_cis, use_real: bool = True, use_real_unbind_dim: int = -1):
    """diffusers' function, plus a real-arithmetic path for (S, D/2, 2) float tables."""
    if use_real or not isinstance(freqs_cis, torch.Tensor) or freqs_cis.is_complex():
        return _ORIGINAL(x, freqs_cis, use_real, use_real_unbind_dim)
    cos = freqs_cis[..., 0].unsqueeze(1)  # (S, 1, D/2), broadcast over heads
    sin = freqs_cis[..., 1].unsqueeze(1)
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(3)
    return out.type_as(x)


def enable_real_rope(transformer) -> None:
    """Make `transformer` pass real RoPE tables to its blocks (see the module docstring)."""
    if _tq is None or _ORIGINAL is None:
        raise RuntimeError("diffusers' Qwen-Image transformer is not available")
    _tq.apply_rotary_emb_qwen = apply_rotary_emb_qwen
    pos_embed = transformer.pos_embed
    if "forward" in pos_embed.__dict__:
        return  # already enabled
    complex_forward = pos_embed.forward

    def forward(*args, **kwargs):
        vid_freqs, txt_freqs = complex_forward(*args, **kwargs)
        return torch.view_as_real(vid_freqs), torch.view_as_real(txt_freqs)

    pos_embed.forward = forward


def disable_real_rope(transformer) -> None:
    """Back to complex tables for `transformer` (the module-level function stays: it is transparent)."""
    transformer.pos_embed.__dict__.pop("forward", None)
