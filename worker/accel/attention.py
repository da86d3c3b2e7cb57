"""Pick the fastest attention backend that computes the same attention as PyTorch's SDPA.

diffusers 0.42 routes the transformer's joint attention through `dispatch_attention_fn`; a backend is
set per model with `set_attention_backend`. Which backends exist depends on the machine (flash-attn or
FA3 packages are optional; cuDNN attention needs a recent cuDNN), so "auto" probes the candidates on
the job's real shape, keeps those within bf16 rounding of SDPA's math reference, with and without a
text-padding mask, and takes the first of them in a fixed preference order unless another is faster by
a clear margin (`choose_backend`).

"fa4" is FlashAttention-4 (the optional `fa4` extra, worker/accel/fa4.py), which has no diffusers
backend name: it runs unmasked calls, and masked ones stay on SDPA. Choosing it installs layerq's
joint-attention processor (worker/accel/joint_attention.py) instead of setting a diffusers backend.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

# Tried, and preferred, in this order; "native" (SDPA's own choice, the authors' path) is always a
# candidate. The order is the measured ranking on an H200 (bench/GPU_NOTES.md, runs 9 and 15): FA4
# 1.61-1.68 ms, SDPA's own choice 1.82-1.89 ms, diffusers' explicit cuDNN 2.03-2.21 ms (its extra
# copies), the others slower still; so the margin rule below keeps what the fastest-pick gave there.
FA4 = "fa4"
CANDIDATES = (FA4, "native", "_native_cudnn", "_flash_3", "flash", "_native_flash", "_native_efficient")
# Another backend replaces the preferred one only when it takes at least this much less time.
# Why a margin: attention kernels round differently, so the backend is part of an exact job's bits.
# Picking the plain fastest, two workers whose candidates time within noise of each other (SDPA's own
# choice and explicit cuDNN were 9-15 % apart across runs) could pick differently, and their exact
# jobs would then differ. A margin well above the run-to-run spread makes the choice the same on every
# worker of one GPU model and software, and costs under 10 % of one attention call when it holds.
MARGIN = 0.10
# A backend must match the float32 math reference this closely (bf16 inputs; ~4e-3 is typical).
MAX_REL_ERR = 2e-2
# Heads per chunk of the float32 math reference (bounds its memory, see probe_backends).
_REF_HEADS = 2


@dataclass(frozen=True)
class BackendProbe:
    name: str
    ok: bool
    ms: float | None = None
    rel_err: float | None = None
    masked_ok: bool = False
    note: str = ""


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def _time_ms(fn, iters: int = 5) -> float:
    fn()
    if not torch.cuda.is_available():  # CPU: only the tests probe there
        started = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - started) * 1000 / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def math_reference(q, k, v, attn_mask, heads_per_chunk: int = _REF_HEADS) -> torch.Tensor:
    """SDPA's float32 math attention of (batch, seq, heads, head_dim) inputs, a few heads at a time.

    The math kernel materialises float32 scores, 8.3 GiB for (1, 24, 9664, 9664) and ~2.4x that
    at its peak: computed whole, the probe (not the model) was the worker's memory high-water
    mark at start (73 GiB allocated on an H200, more than an 80 GB H100 has after the weights).
    Per 2 heads it is ~1.6 GiB."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for h in range(0, q.shape[2], heads_per_chunk):
        qf, kf, vf = (x[:, :, h:h + heads_per_chunk].float().permute(0, 2, 1, 3) for x in (q, k, v))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
            chunk = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, attn_mask=attn_mask)
        out[:, :, h:h + heads_per_chunk] = chunk.permute(0, 2, 1, 3)
        del qf, kf, vf, chunk
    return out


def probe_backends(
    seq_len: int,
    heads: int = 24,
    head_dim: int = 128,
    txt_len: int = 64,
    device: str = "cuda",
    candidates: tuple[str, ...] = CANDIDATES,
) -> list[BackendProbe]:
    """Time and check each candidate on (1, seq_len, heads, head_dim) bf16 inputs (diffusers layout)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, seq_len, heads, head_dim, device=device, dtype=torch.bfloat16, generator=g)
        for _ in range(3)
    )
    mask = torch.ones(1, seq_len, dtype=torch.bool, device=device)
    mask[:, txt_len // 2 : txt_len] = False  # padded text tokens, as in a batched prompt
    mask4 = mask[:, None, None, :]

    try:
        ref, ref_masked = math_reference(q, k, v, None), math_reference(q, k, v, mask4)
    except Exception as exc:  # noqa: BLE001 - no reference, no check: keep SDPA's own choice
        log.warning("attention probe skipped: %s: %s", type(exc).__name__, str(exc)[:200])
        return [BackendProbe("native", True, note=f"no reference: {type(exc).__name__}")]
    results = []
    for name in candidates:
        if name == FA4:
            from . import fa4

            why_not = fa4.available() if device != "cpu" else "no CUDA device"
            if why_not is not None:
                results.append(BackendProbe(name, False, note=why_not))
                continue
        try:
            def run(attn_mask=None, name=name):
                if name == FA4:  # unmasked: FA4; masked: SDPA's own choice (see the module docstring)
                    from . import fa4

                    if attn_mask is None:
                        return fa4.attention(q, k, v)
                    name = "native"
                return dispatch_attention_fn(q, k, v, attn_mask=attn_mask, backend=name)

            err = _rel_err(run(), ref)
            ms = _time_ms(run)
            try:
                masked_ok = _rel_err(run(mask4), ref_masked) <= MAX_REL_ERR
            except Exception:  # noqa: BLE001 - a backend without mask support is still usable unmasked
                masked_ok = False
            results.append(BackendProbe(name, err <= MAX_REL_ERR, ms, err, masked_ok))
        except Exception as exc:  # noqa: BLE001 - missing packages, unsupported GPU, shape limits
            results.append(BackendProbe(name, False, note=f"{type(exc).__name__}: {str(exc)[:120]}"))
    return results


def choose_backend(
    probes: list[BackendProbe], preference: tuple[str, ...] = CANDIDATES, margin: float = MARGIN,
) -> str:
    """The first usable backend (correct, with and without a padding mask) in `preference` order
    (names not in it come after, in probe order) unless another usable one is faster by `margin`
    or more; then the first in order within `margin` of the fastest. "native" if none is usable."""
    if not 0 <= margin < 1:
        raise ValueError(f"margin must be in [0, 1), got {margin!r}")
    usable = [p for p in probes if p.ok and p.masked_ok and p.ms is not None]
    if not usable:
        return "native"
    rank = {name: i for i, name in enumerate(preference)}
    ordered = sorted(usable, key=lambda p: rank.get(p.name, len(rank)))  # stable: probe order after
    fastest = min(p.ms for p in usable)
    # "Faster by margin": fastest <= (1 - margin) * p.ms. The fastest itself always qualifies.
    return next(p.name for p in ordered if fastest > (1 - margin) * p.ms or p.ms == fastest)


def apply_backend(transformer, name: str | None) -> None:
    """Set `name` on every attention processor of `transformer` (None or "native": SDPA default;
    "fa4": SDPA's default for masked calls, the FA4 kernel is the joint-attention processor's)."""
    transformer.set_attention_backend("native" if name in (None, FA4) else name)
