"""Qwen-Image's joint attention with fused Q/K/V projections and a pluggable unmasked kernel.

diffusers' `QwenDoubleStreamAttnProcessor2_0` projects each stream with three GEMMs (q, k, v) and
sends every call through `dispatch_attention_fn`. `JointAttnProcessor` computes the same function
with two changes, each optional:

* **Fused projections** (`fuse_qkv`): per stream one GEMM against the concatenated [Wq; Wk; Wv]
  (3072 → 9216) instead of three. Same dot products, one launch instead of three and the input read
  once; in bf16 the GEMM may round differently (different tiling), in float32 it is the same result
  to float32 rounding (tests/test_acceleration.py). The original `to_q`/`to_k`/`to_v` weights become
  views into the fused weight, so the model holds each weight once and the authors' processor still
  works on the same module (`unfuse_qkv` puts it back).
* **An unmasked kernel** (`unmasked_attention`, e.g. FlashAttention-4): used when the joint sequence
  has no padding mask, the batch-1 job's case; a masked call goes through `dispatch_attention_fn`
  with the processor's diffusers backend, as before.
* **One pass for q/k RMSNorm + RoPE + the [text, image] concatenation** (`fuse_norm_rope`,
  worker/accel/qk_norm_rope.py): one Triton kernel per stream writes the joint q, k, v straight from the
  projection outputs, in the layout the attention kernel takes ((B, S, H, D) for the unmasked kernel,
  (B, H, S, D) storage for SDPA). Same arithmetic as the authors' eager path.

The math order (projection, RMSNorm of q and k, RoPE, [text, image] concatenation, attention, split,
output projections) is the authors' processor's; RoPE is looked up from diffusers' module at call
time, so `worker.accel.rope`'s real-arithmetic version applies here too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import qk_norm_rope

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# (fused module name, the three projections it replaces), per stream.
_STREAMS = (
    ("to_qkv", ("to_q", "to_k", "to_v")),
    ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")),
)


def joint_attention_modules(transformer) -> list[nn.Module]:
    """The transformer's joint attention modules (one per block)."""
    return [block.attn for block in _blocks(transformer)]


def _blocks(transformer) -> list[nn.Module]:
    from .transformer import repeated_blocks

    return repeated_blocks(transformer)


class JointAttnProcessor:
    """Drop-in processor for a Qwen-Image block's `Attention` (see the module docstring)."""

    _attention_backend = None  # set by diffusers' `set_attention_backend`, like its own processors
    _parallel_config = None

    def __init__(self, unmasked_attention: AttentionFn | None = None, fuse_norm_rope: bool = False):
        self.unmasked_attention = unmasked_attention
        self.fuse_norm_rope = fuse_norm_rope

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        if encoder_hidden_states is None:
            raise ValueError("joint attention needs encoder_hidden_states (the text stream)")
        if attention_mask is not None:
            raise ValueError("pass encoder_hidden_states_mask; the joint mask is built here")
        if encoder_hidden_states_mask is not None:
            image_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
            attention_mask = torch.cat([encoder_hidden_states_mask, image_mask], dim=1)[:, None, None, :]

        head_dim = attn.inner_dim // attn.heads
        img = _project(attn, hidden_states, *_STREAMS[0], head_dim)
        txt = _project(attn, encoder_hidden_states, *_STREAMS[1], head_dim)
        unmasked = attention_mask is None and self.unmasked_attention is not None
        if self.fuse_norm_rope and qk_norm_rope.fusable(attn, image_rotary_emb, head_dim):
            query, key, value = qk_norm_rope.joint_qkv(
                img, txt, (attn.norm_q.weight, attn.norm_k.weight),
                (attn.norm_added_q.weight, attn.norm_added_k.weight), *image_rotary_emb, attn.norm_q.eps, heads_major=not unmasked,  # SDPA permutes to (B, H, S, D)
            )
        else:
            query, key, value = _norm_rope_cat(attn, img, txt, image_rotary_emb)
        if unmasked:
            joint = self.unmasked_attention(query, key, value)
        else:
            joint = dispatch_attention_fn(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False,
                backend=self._attention_backend, parallel_config=self._parallel_config,
            )
        joint = joint.flatten(2, 3).to(query.dtype)
        seq_txt = encoder_hidden_states.shape[1]
        img_out = attn.to_out[0](joint[:, seq_txt:].contiguous())
        if len(attn.to_out) > 1:
            img_out = attn.to_out[1](img_out)  # dropout (identity in eval)
        txt_out = attn.to_add_out(joint[:, :seq_txt].contiguous())
        return img_out, txt_out


def _norm_rope_cat(attn, img: tuple, txt: tuple, image_rotary_emb):
    """The authors' order: RMSNorm of q and k per stream, RoPE per stream, [text, image] concatenation."""
    from diffusers.models.transformers import transformer_qwenimage as tq

    img_q, img_k, img_v = img
    txt_q, txt_k, txt_v = txt
    if attn.norm_q is not None:
        img_q = attn.norm_q(img_q)
    if attn.norm_k is not None:
        img_k = attn.norm_k(img_k)
    if attn.norm_added_q is not None:
        txt_q = attn.norm_added_q(txt_q)
    if attn.norm_added_k is not None:
        txt_k = attn.norm_added_k(txt_k)
    if image_rotary_emb is not None:
        img_freqs, txt_freqs = image_rotary_emb
        img_q = tq.apply_rotary_emb_qwen(img_q, img_freqs, use_real=False)
        img_k = tq.apply_rotary_emb_qwen(img_k, img_freqs, use_real=False)
        txt_q = tq.apply_rotary_emb_qwen(txt_q, txt_freqs, use_real=False)
        txt_k = tq.apply_rotary_emb_qwen(txt_k, txt_freqs, use_real=False)
    query = torch.cat([txt_q, img_q], dim=1)  # [text, image], as the authors order it
    key = torch.cat([txt_k, img_k], dim=1)
    value = torch.cat([txt_v, img_v], dim=1)
    return query, key, value


def _project(attn, x: torch.Tensor, fused_name: str, names: tuple[str, str, str], head_dim: int):
    fused = getattr(attn, fused_name, None)
    if fused is not None:
        outs = fused(x).chunk(3, dim=-1)
    else:
        outs = tuple(getattr(attn, n)(x) for n in names)
    return tuple(o.unflatten(-1, (-1, head_dim)) for o in outs)


def fuse_qkv(transformer) -> int:
    """Give every joint attention one [q; k; v] projection per stream; returns how many were fused.

    The three original linears keep working: their weights and biases become views of the fused ones
    (no second copy of the weights is kept)."""
    count = 0
    for attn in joint_attention_modules(transformer):
        for fused_name, names in _STREAMS:
            if getattr(attn, fused_name, None) is not None:
                continue
            parts = [getattr(attn, n) for n in names]
            fused = _concat_linears(parts)
            setattr(attn, fused_name, fused)
            _view_into(parts, fused)
            count += 1
    return count


def unfuse_qkv(transformer) -> None:
    """Drop the fused modules (the original projections, views of the same storage, remain)."""
    for attn in joint_attention_modules(transformer):
        for fused_name, _ in _STREAMS:
            if fused_name in attn._modules:
                del attn._modules[fused_name]


def _concat_linears(parts: list[nn.Linear]) -> nn.Linear:
    w0 = parts[0].weight
    out_features = sum(p.out_features for p in parts)
    has_bias = all(p.bias is not None for p in parts)
    fused = nn.Linear(parts[0].in_features, out_features, bias=has_bias, device=w0.device, dtype=w0.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts], dim=0))
        if has_bias:
            fused.bias.copy_(torch.cat([p.bias for p in parts], dim=0))
    fused.requires_grad_(False)
    return fused


def _view_into(parts: list[nn.Linear], fused: nn.Linear) -> None:
    start = 0
    for p in parts:
        end = start + p.out_features
        p.weight = nn.Parameter(fused.weight[start:end], requires_grad=False)
        if fused.bias is not None:
            p.bias = nn.Parameter(fused.bias[start:end], requires_grad=False)
        start = end


def install(
    transformer, unmasked_attention: AttentionFn | None = None, fuse_norm_rope: bool = False,
) -> dict[nn.Module, object]:
    """Put a `JointAttnProcessor` on every joint attention; returns the processors it replaced."""
    if fuse_norm_rope:
        qk_norm_rope.register()  # now, not inside a compiled block's first trace
    replaced = {}
    for attn in joint_attention_modules(transformer):
        old = attn.processor
        if isinstance(old, JointAttnProcessor):
            old.unmasked_attention = unmasked_attention
            old.fuse_norm_rope = fuse_norm_rope
            continue
        new = JointAttnProcessor(unmasked_attention, fuse_norm_rope)
        new._attention_backend = getattr(old, "_attention_backend", None)
        new._parallel_config = getattr(old, "_parallel_config", None)
        attn.processor = new
        replaced[attn] = old
    return replaced


def uninstall(replaced: dict[nn.Module, object]) -> None:
    for attn, old in replaced.items():
        attn.processor = old
