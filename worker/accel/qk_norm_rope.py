"""Joint q/k/v for Qwen-Image's attention in one pass: RMSNorm of q and k, RoPE, [text, image] concatenation.

The authors' processor (and `JointAttnProcessor` without this switch) normalises q and k per stream, applies
RoPE per stream and concatenates q, k and v of the two streams into joint tensors. Inside the compiled block
Inductor fuses norm + RoPE into one generated kernel per tensor, but that kernel ran at about a third of copy
bandwidth (bench/GPU_NOTES.md, run 6: 14.8 ms per transformer call on an H100 for the image stream), and the
value's concatenation is one more copy. `joint_qkv` does all of it in one Triton kernel launch per stream:
each program reads a block of (token, head) rows of q, k and v straight from the projection outputs (three
separate GEMM outputs or views into a fused Q/K/V output: any row stride), and writes them into the joint
tensors at the stream's offset — q and k normalised with that stream's RMSNorm weight and rotated with that
token's (cos, sin), v copied.

Arithmetic, rounding included, is the authors' eager path's (diffusers `RMSNorm` then
`apply_rotary_emb_qwen`): x·rsqrt(mean(x²) + eps) in float32, rounded to the weight's dtype, times the
weight (rounded again), then the rotation (a + ib)(cos + i·sin) in float32, rounded to the input's dtype.

Registered as a `torch.library.triton_op` (Inductor sees the user kernel inside the compiled block, with
symbolic sequence lengths) and, as a fallback, as an opaque `custom_op` with a shape-only fake; on CPU both
run `reference()`, plain PyTorch with the same arithmetic. `TRITON_INTERPRET` lets tests run the kernel
itself on CPU tensors (tests/test_qk_norm_rope.py).

Output layout: `heads_major=False` gives contiguous (B, S, H, D), what FA4 takes; `heads_major=True`
gives a (B, S, H, D)-shaped tensor stored as (B, H, S, D), so SDPA's permute to (B, H, S, D) (diffusers'
native backend) is a contiguous view and no layout copy is needed before its kernel.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch without triton (e.g. macOS): CPU reference only
    triton = None

OP_NAME = "layerq::joint_qk_norm_rope"
OPAQUE_OP_NAME = "layerq::joint_qk_norm_rope_opaque"

# Launch config, swept by bench/gpu_qkfuse.py: (token, head) rows per program, warps per program, and how
# the (re, im) pairs are taken apart: "split" loads whole rows and splits them in registers, "strided"
# loads and stores the even and the odd elements separately.
# H200 (qkfuse run 1): 16 rows × 4 warps, split, was the fastest; "strided" was 3-6× slower.
CONFIG = {"block_rows": 16, "num_warps": 4, "pairs": "split"}
# Which registration the processor calls: "triton_op" (Inductor sees the kernel) or "custom_op" (opaque).
IMPL = "triton_op"


if triton is not None:

    @triton.jit
    def _joint_rows_kernel(
        q_src, k_src, v_src,
        q_sb, q_ss, q_sh, k_sb, k_ss, k_sh, v_sb, v_ss, v_sh,
        q_dst, k_dst, v_dst,
        d_sb, d_ss, d_sh, s_offset,
        wq_ptr, wk_ptr,
        rope_ptr, rope_ss, rope_sj, rope_sc,
        seq, heads, n_rows, eps,
        HEAD_DIM: tl.constexpr, BLOCK_ROWS: tl.constexpr, SPLIT_PAIRS: tl.constexpr,
    ):
        # One program: BLOCK_ROWS consecutive (batch, token, head) rows of one stream, all of q, k and v.
        rows = (tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)).to(tl.int64)
        live = rows < n_rows
        h = rows % heads
        t = rows // heads
        s = t % seq
        b = t // seq
        d = tl.arange(0, HEAD_DIM)
        half = tl.arange(0, HEAD_DIM // 2)
        live2 = live[:, None]

        dst_row = (b * d_sb + (s + s_offset) * d_ss + h * d_sh)[:, None] + d[None, :]
        v = tl.load(v_src + (b * v_sb + s * v_ss + h * v_sh)[:, None] + d[None, :], mask=live2)
        tl.store(v_dst + dst_row, v, mask=live2)

        rope_row = (s * rope_ss)[:, None] + (half * rope_sj)[None, :]
        cos = tl.load(rope_ptr + rope_row, mask=live2).to(tl.float32)
        sin = tl.load(rope_ptr + rope_row + rope_sc, mask=live2).to(tl.float32)
        # q then k (a static loop, unrolled at compile time; one function so tests can interpret it alone).
        for which in tl.static_range(2):
            if which == 0:
                src, sb, ss, sh, w_ptr, dst = q_src, q_sb, q_ss, q_sh, wq_ptr, q_dst
            else:
                src, sb, ss, sh, w_ptr, dst = k_src, k_sb, k_ss, k_sh, wk_ptr, k_dst
            src_row = (b * sb + s * ss + h * sh)[:, None]
            if SPLIT_PAIRS:
                x = tl.load(src + src_row + d[None, :], mask=live2).to(tl.float32)
                w = tl.load(w_ptr + d).to(tl.float32)
                rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
                # diffusers' RMSNorm: normalise in float32, round to the weight's dtype, multiply (rounded again).
                n = (x * rstd[:, None]).to(w_ptr.dtype.element_ty)
                n = (n.to(tl.float32) * w[None, :]).to(w_ptr.dtype.element_ty).to(tl.float32)
                # RoPE on interleaved (re, im) pairs: (re + i·im)(cos + i·sin) in float32.
                re, im = tl.split(tl.reshape(n, (BLOCK_ROWS, HEAD_DIM // 2, 2)))
                out = tl.reshape(tl.join(re * cos - im * sin, re * sin + im * cos), (BLOCK_ROWS, HEAD_DIM))
                tl.store(dst + dst_row, out.to(dst.dtype.element_ty), mask=live2)
            else:
                even = src_row + 2 * half[None, :]
                re = tl.load(src + even, mask=live2).to(tl.float32)
                im = tl.load(src + even + 1, mask=live2).to(tl.float32)
                w_re = tl.load(w_ptr + 2 * half).to(tl.float32)
                w_im = tl.load(w_ptr + 2 * half + 1).to(tl.float32)
                rstd = tl.rsqrt((tl.sum(re * re, axis=1) + tl.sum(im * im, axis=1)) / HEAD_DIM + eps)
                re = (re * rstd[:, None]).to(w_ptr.dtype.element_ty)
                im = (im * rstd[:, None]).to(w_ptr.dtype.element_ty)
                re = (re.to(tl.float32) * w_re[None, :]).to(w_ptr.dtype.element_ty).to(tl.float32)
                im = (im.to(tl.float32) * w_im[None, :]).to(w_ptr.dtype.element_ty).to(tl.float32)
                dst_even = (b * d_sb + (s + s_offset) * d_ss + h * d_sh)[:, None] + 2 * half[None, :]
                tl.store(dst + dst_even, (re * cos - im * sin).to(dst.dtype.element_ty), mask=live2)
                tl.store(dst + dst_even + 1, (re * sin + im * cos).to(dst.dtype.element_ty), mask=live2)


def rope_table(freqs: torch.Tensor) -> torch.Tensor:
    """(S, D/2, 2) float (cos, sin) pairs from diffusers' complex (S, D/2) table or `worker.accel.rope`'s real one."""
    return torch.view_as_real(freqs) if freqs.is_complex() else freqs


def _alloc(like: torch.Tensor, batch: int, seq: int, heads: int, head_dim: int, heads_major: bool) -> torch.Tensor:
    if heads_major:  # (B, S, H, D) view of (B, H, S, D) storage
        stride = (heads * seq * head_dim, head_dim, seq * head_dim, 1)
    else:
        stride = (seq * heads * head_dim, heads * head_dim, head_dim, 1)
    return torch.empty_strided((batch, seq, heads, head_dim), stride, dtype=like.dtype, device=like.device)


def _alloc_outputs(img_q, txt_q, heads_major):
    batch, s_img, heads, head_dim = img_q.shape
    seq = txt_q.shape[1] + s_img
    return tuple(_alloc(img_q, batch, seq, heads, head_dim, heads_major) for _ in range(3))


def _norm_rope_reference(x, weight, rope, eps):
    """diffusers' RMSNorm then `apply_rotary_emb_qwen`, with the kernel's float32 (cos, sin) formula."""
    xf = x.float()
    n = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(weight.dtype)
    n = (n * weight).float()  # same-dtype multiply, rounded to the weight's dtype, as diffusers does
    cos, sin = rope[..., 0].float().unsqueeze(1), rope[..., 1].float().unsqueeze(1)  # (S, 1, D/2)
    re, im = n.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1).flatten(-2).to(x.dtype)


def reference(img_q, img_k, img_v, txt_q, txt_k, txt_v, w_img_q, w_img_k, w_txt_q, w_txt_k,
              img_rope, txt_rope, eps: float, heads_major: bool = False):
    """Plain-PyTorch `joint_qkv` (CPU path and the kernel's test oracle)."""
    q, k, v = _alloc_outputs(img_q, txt_q, heads_major)
    s_txt = txt_q.shape[1]
    for dst, (txt, img) in zip((q, k), (((txt_q, w_txt_q), (img_q, w_img_q)), ((txt_k, w_txt_k), (img_k, w_img_k)))):
        dst[:, :s_txt] = _norm_rope_reference(*txt, txt_rope, eps)
        dst[:, s_txt:] = _norm_rope_reference(*img, img_rope, eps)
    v[:, :s_txt] = txt_v
    v[:, s_txt:] = img_v
    return q, k, v


def launch(kernel, src: tuple, w_q, w_k, rope, dst: tuple, s_offset: int, eps: float) -> None:
    """Run `kernel` (the jitted kernel, `wrap_triton` of it, or an interpreted copy) for one stream."""
    q, k, v = src
    batch, seq, heads, head_dim = q.shape
    n_rows = batch * seq * heads
    block = CONFIG["block_rows"]
    kernel[(triton.cdiv(n_rows, block),)](
        q, k, v,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        dst[0], dst[1], dst[2], dst[0].stride(0), dst[0].stride(1), dst[0].stride(2), s_offset,
        w_q, w_k, rope, rope.stride(0), rope.stride(1), rope.stride(2),
        seq, heads, n_rows, eps,
        HEAD_DIM=head_dim, BLOCK_ROWS=block, SPLIT_PAIRS=CONFIG["pairs"] == "split", num_warps=CONFIG["num_warps"],
    )


def _run(kernel, img_q, img_k, img_v, txt_q, txt_k, txt_v, w_img_q, w_img_k, w_txt_q, w_txt_k,
         img_rope, txt_rope, eps, heads_major):
    out = _alloc_outputs(img_q, txt_q, heads_major)
    launch(kernel, (txt_q, txt_k, txt_v), w_txt_q, w_txt_k, txt_rope, out, 0, eps)
    launch(kernel, (img_q, img_k, img_v), w_img_q, w_img_k, img_rope, out, txt_q.shape[1], eps)
    return out


_ops: dict = {}


def register() -> None:
    """Register both ops once (needs triton; CUDA tensors run the kernel, CPU tensors the reference)."""
    if _ops or triton is None:
        return
    from torch.library import custom_op, triton_op, wrap_triton

    @triton_op(OP_NAME, mutates_args=())
    def joint_qk_norm_rope(
        img_q: torch.Tensor, img_k: torch.Tensor, img_v: torch.Tensor,
        txt_q: torch.Tensor, txt_k: torch.Tensor, txt_v: torch.Tensor,
        w_img_q: torch.Tensor, w_img_k: torch.Tensor, w_txt_q: torch.Tensor, w_txt_k: torch.Tensor,
        img_rope: torch.Tensor, txt_rope: torch.Tensor, eps: float, heads_major: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = (img_q, img_k, img_v, txt_q, txt_k, txt_v, w_img_q, w_img_k, w_txt_q, w_txt_k, img_rope, txt_rope,
                eps, heads_major)
        if not img_q.is_cuda:
            return reference(*args)
        return _run(wrap_triton(_joint_rows_kernel), *args)

    @custom_op(OPAQUE_OP_NAME, mutates_args=())
    def joint_qk_norm_rope_opaque(
        img_q: torch.Tensor, img_k: torch.Tensor, img_v: torch.Tensor,
        txt_q: torch.Tensor, txt_k: torch.Tensor, txt_v: torch.Tensor,
        w_img_q: torch.Tensor, w_img_k: torch.Tensor, w_txt_q: torch.Tensor, w_txt_k: torch.Tensor,
        img_rope: torch.Tensor, txt_rope: torch.Tensor, eps: float, heads_major: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        args = (img_q, img_k, img_v, txt_q, txt_k, txt_v, w_img_q, w_img_k, w_txt_q, w_txt_k, img_rope, txt_rope,
                eps, heads_major)
        if not img_q.is_cuda:
            return reference(*args)
        return _run(_joint_rows_kernel, *args)

    @joint_qk_norm_rope_opaque.register_fake
    def _(img_q, img_k, img_v, txt_q, txt_k, txt_v, w_img_q, w_img_k, w_txt_q, w_txt_k, img_rope, txt_rope,
          eps, heads_major):
        return _alloc_outputs(img_q, txt_q, heads_major)

    _ops["triton_op"] = joint_qk_norm_rope
    _ops["custom_op"] = joint_qk_norm_rope_opaque


def joint_qkv(img: tuple, txt: tuple, img_weights: tuple, txt_weights: tuple, img_freqs, txt_freqs,
              eps: float, heads_major: bool = False):
    """Joint (q, k, v), each (B, S_txt + S_img, H, D), text first as the authors order it.

    `img`/`txt`: (q, k, v) projections of a stream as (B, S, H, D) tensors (views are fine; the last
    dimension must be contiguous); `*_weights`: that stream's (norm_q, norm_k) RMSNorm weights;
    `*_freqs`: its RoPE table, complex (S, D/2) or real (S, D/2, 2)."""
    img = tuple(_last_dim_contiguous(x) for x in img)
    txt = tuple(_last_dim_contiguous(x) for x in txt)
    args = (*img, *txt, *img_weights, *txt_weights, rope_table(img_freqs), rope_table(txt_freqs),
            float(eps), bool(heads_major))
    register()
    if not _ops:
        return reference(*args)
    return _ops[IMPL](*args)


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def fusable(attn, image_rotary_emb, head_dim: int) -> bool:
    """Whether `attn` has the structure `joint_qkv` computes: diffusers RMSNorms with weights on q and k of
    both streams (one eps), RoPE tables, and a power-of-two head size (the kernel's tile width)."""
    norms = (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k)
    return (
        image_rotary_emb is not None
        and all(type(n).__name__ == "RMSNorm" and getattr(n, "weight", None) is not None
                and getattr(n, "bias", None) is None for n in norms)
        and len({n.eps for n in norms}) == 1
        and head_dim & (head_dim - 1) == 0
    )
