"""The one-pass q/k RMSNorm + RoPE + [text, image] concatenation (worker/accel/qk_norm_rope.py) on CPU.

Three layers of checks: the Triton kernel itself (run by Triton's interpreter on CPU tensors, in a
subprocess because `TRITON_INTERPRET` is read when the kernel is decorated) against the plain-PyTorch
reference; the processor with the switch against the authors' `QwenDoubleStreamAttnProcessor2_0`; and the
whole pipeline call with the switch against the authors' call. GPU timing and bf16 error vs the authors'
call: bench/gpu_qkfuse.py, bench/GPU_NOTES.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers.models.transformers.transformer_qwenimage import QwenDoubleStreamAttnProcessor2_0  # noqa: E402

from worker.accel import joint_attention, qk_norm_rope  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.acceleration import SpeedOptions, prepare  # noqa: E402

JOB = dict(layers=1, resolution=640, num_inference_steps=2, true_cfg_scale=4.0, cfg_normalize=True,
           use_en_prompt=True, output_type="np")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(dtype, batch=2, s_img=37, s_txt=5, heads=3, head_dim=16, seed=0):
    """Projection outputs as views into fused [q | k | v] GEMM outputs (row stride 3·H·D), weights, RoPE."""
    g = torch.Generator().manual_seed(seed)
    width = heads * head_dim

    def stream(seq):
        fused = (torch.randn(batch, seq, 3 * width, generator=g) * 3).to(dtype)
        return tuple(c.unflatten(-1, (heads, head_dim)) for c in fused.chunk(3, dim=-1))

    def table(seq):
        angles = torch.rand(seq, head_dim // 2, generator=g) * 6.3
        return torch.polar(torch.ones_like(angles), angles)  # complex, as diffusers builds it

    img, txt = stream(s_img), stream(s_txt)
    weights = [(torch.rand(head_dim, generator=g) + 0.5).to(dtype) for _ in range(4)]
    return img, txt, tuple(weights[:2]), tuple(weights[2:]), table(s_img), table(s_txt)


def kernel_vs_reference() -> dict:
    """Max |kernel − reference| / max |reference| per dtype, layout and output (run with TRITON_INTERPRET=1)."""
    out = {}
    for pairs in ("split", "strided"):
        qk_norm_rope.CONFIG["pairs"] = pairs
        out[pairs] = _kernel_vs_reference_once()
    return out


def _kernel_vs_reference_once() -> dict:
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        img, txt, w_img, w_txt, f_img, f_txt = _inputs(dtype)
        for heads_major in (False, True):
            args = (*img, *txt, *w_img, *w_txt, qk_norm_rope.rope_table(f_img), qk_norm_rope.rope_table(f_txt),
                    1e-6, heads_major)
            want = qk_norm_rope.reference(*args)
            got = qk_norm_rope._run(qk_norm_rope._joint_rows_kernel, *args)
            key = f"{str(dtype).split('.')[-1]} {'heads_major' if heads_major else 'bshd'}"
            out[key] = [float((a.float() - b.float()).abs().max() / b.float().abs().max()) for a, b in zip(got, want)]
            out[key + " strides"] = [list(t.stride()) == list(w.stride()) for t, w in zip(got, want)]
        # The same call with the streams' norm weights swapped: what a stream mix-up would look like.
        swapped = qk_norm_rope.reference(*img, *txt, *w_txt, *w_img, qk_norm_rope.rope_table(f_img),
                                         qk_norm_rope.rope_table(f_txt), 1e-6, False)
        got = qk_norm_rope._run(qk_norm_rope._joint_rows_kernel, *img, *txt, *w_img, *w_txt,
                                qk_norm_rope.rope_table(f_img), qk_norm_rope.rope_table(f_txt), 1e-6, False)
        out[f"{str(dtype).split('.')[-1]} swapped weights"] = float(
            (got[0].float() - swapped[0].float()).abs().max() / swapped[0].float().abs().max())
    return out


@pytest.mark.skipif(qk_norm_rope.triton is None, reason="needs triton (its interpreter runs the kernel on CPU)")
def test_triton_kernel_matches_the_reference_in_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    code = "import json; from tests.test_qk_norm_rope import kernel_vs_reference as f; print(json.dumps(f()))"
    run = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    both = json.loads(run.stdout.strip().splitlines()[-1])
    for res in both.values():
        _check_kernel_result(res)


def _check_kernel_result(res):
    for layout in ("bshd", "heads_major"):
        assert all(e < 1e-6 for e in res[f"float32 {layout}"]), res  # float32: same formula, same order
        assert res[f"float32 {layout} strides"] == [True] * 3, res
        # The interpreter truncates float32 → bf16 (the GPU rounds to nearest): up to one bf16 step per rounding.
        assert all(e < 2e-2 for e in res[f"bfloat16 {layout}"]), res
    assert res["float32 {}".format("bshd")][2] == 0.0, "v is a copy"
    # The tolerances above do catch a stream mix-up (each stream's norm weight on the other's rows).
    assert res["float32 swapped weights"] > 5e-2 and res["bfloat16 swapped weights"] > 5e-2, res


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("small", device="cpu", seed=0)


def _rope(attn, s_img, s_txt, real: bool):
    _, _, _, _, f_img, f_txt = _inputs(torch.float32, 1, s_img, s_txt, attn.heads, attn.inner_dim // attn.heads, 5)
    return (torch.view_as_real(f_img), torch.view_as_real(f_txt)) if real else (f_img, f_txt)


@pytest.fixture
def attn(pipe):
    """The first block's attention with random RMSNorm weights (the synthetic model's are all ones, which
    would hide a stream mix-up); the weights are put back afterwards."""
    attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
    norms = (attn.norm_q, attn.norm_k, attn.norm_added_q, attn.norm_added_k)
    saved = [n.weight.data.clone() for n in norms]
    g = torch.Generator().manual_seed(3)
    for n in norms:
        n.weight.data.copy_(torch.rand(n.weight.shape, generator=g) + 0.5)
    yield attn
    for n, w in zip(norms, saved):
        n.weight.data.copy_(w)


@pytest.mark.parametrize("real", [False, True])
def test_processor_gives_the_authors_attention(attn, real):
    g = torch.Generator().manual_seed(1)
    img = torch.randn(1, 48, attn.inner_dim, generator=g)
    txt = torch.randn(1, 7, attn.inner_dim, generator=g)
    authors = QwenDoubleStreamAttnProcessor2_0()
    qk_norm_rope.register()
    ours = joint_attention.JointAttnProcessor(fuse_norm_rope=True)
    seen = {}
    kernel_calls = []

    def unmasked(q, k, v):  # SDPA on (B, S, H, D) inputs; records the layout it was handed
        kernel_calls.append(q.is_contiguous() and k.is_contiguous() and v.is_contiguous())
        out = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
        return out.transpose(1, 2)

    original = qk_norm_rope.joint_qkv

    def spy(*a, **k):
        seen["heads_major"] = k["heads_major"]
        return original(*a, **k)

    want = authors(attn, img, txt, image_rotary_emb=_rope(attn, 48, 7, False))
    qk_norm_rope.joint_qkv = spy
    try:
        got = ours(attn, img, txt, image_rotary_emb=_rope(attn, 48, 7, real))
        assert seen == {"heads_major": True}, "SDPA gets (B, H, S, D) storage"
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        ours.unmasked_attention = unmasked
        got = ours(attn, img, txt, image_rotary_emb=_rope(attn, 48, 7, real))
        assert seen == {"heads_major": False} and kernel_calls == [True], "the unmasked kernel gets (B, S, H, D)"
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        mask = torch.ones(1, 7, dtype=torch.bool)
        mask[:, 5:] = False
        got = ours(attn, img, txt, encoder_hidden_states_mask=mask, image_rotary_emb=_rope(attn, 48, 7, real))
        want_masked = authors(attn, img, txt, encoder_hidden_states_mask=mask, image_rotary_emb=_rope(attn, 48, 7, False))
        for a, b in zip(got, want_masked):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    finally:
        qk_norm_rope.joint_qkv = original
    # The comparison can fail: with the streams' q-norm weights exchanged the output differs.
    attn.norm_q.weight.data, attn.norm_added_q.weight.data = attn.norm_added_q.weight.data, attn.norm_q.weight.data
    try:
        bad = ours(attn, img, txt, image_rotary_emb=_rope(attn, 48, 7, real))
    finally:
        attn.norm_q.weight.data, attn.norm_added_q.weight.data = attn.norm_added_q.weight.data, attn.norm_q.weight.data
    assert not torch.allclose(bad[0], want[0], rtol=1e-3, atol=1e-3)


def test_processor_falls_back_without_rope_or_rms_norms(pipe):
    attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
    head_dim = attn.inner_dim // attn.heads
    assert qk_norm_rope.fusable(attn, _rope(attn, 4, 2, True), head_dim)
    assert not qk_norm_rope.fusable(attn, None, head_dim)
    assert not qk_norm_rope.fusable(attn, _rope(attn, 4, 2, True), 24)  # not a power of two
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(1, 16, attn.inner_dim, generator=g), torch.randn(1, 3, attn.inner_dim, generator=g)
    for a, b in zip(joint_attention.JointAttnProcessor(fuse_norm_rope=True)(attn, img, txt),
                    type(attn.processor)()(attn, img, txt)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _final_latents(call, **kwargs):
    captured = {}

    def keep(pipe, i, t, kw):
        captured["latents"] = kw["latents"].clone()
        return {}

    call(image=sample_image(400, 600, seed=2), prompt="two cats", negative_prompt=" ",
         generator=torch.Generator().manual_seed(777), callback_on_step_end=keep, **JOB, **kwargs)
    return captured["latents"]


@pytest.mark.parametrize("changes", [dict(), dict(real_rope=True, fused_qkv=True)])
def test_switch_gives_the_authors_call_and_restores(pipe, changes):
    plain = _final_latents(pipe)
    fast = prepare(pipe, SpeedOptions(fused_qk_norm_rope=True, **changes))
    try:
        attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
        assert isinstance(attn.processor, joint_attention.JointAttnProcessor) and attn.processor.fuse_norm_rope
        calls = []
        original = qk_norm_rope.joint_qkv

        def counting(*a, **k):
            calls.append(1)
            return original(*a, **k)

        qk_norm_rope.joint_qkv = counting
        try:
            fused = _final_latents(fast)
        finally:
            qk_norm_rope.joint_qkv = original
        assert calls, "the fused path must actually run"
    finally:
        fast.restore()
    assert float((fused - plain).norm() / plain.norm()) < 1e-5
    assert not isinstance(attn.processor, joint_attention.JointAttnProcessor)
    assert torch.equal(_final_latents(pipe), plain), "restore() must give the authors' call back exactly"


def test_switch_is_on_for_cuda_and_off_on_cpu():
    assert SpeedOptions.for_device("cuda").fused_qk_norm_rope, "measured faster at the same error (GPU_NOTES)"
    assert not SpeedOptions.for_device("cpu").fused_qk_norm_rope


def test_switch_gives_the_authors_edit(monkeypatch):
    # The edit worker shares the switches (worker/accel/editor.py): its model runs the same blocks with a
    # 2-D RoPE and a longer text stream (the condition image goes through the text encoder).
    from worker.accel.editor import FastEditor
    from worker.models import build_edit

    edit = build_edit("small", device="cpu")

    def final_latents():
        captured = {}

        def keep(p, i, t, kw):
            captured["latents"] = kw["latents"].clone()
            return {}

        edit(image=[sample_image(96, 64, seed=2).convert("RGB")], prompt="make it blue", negative_prompt=" ",
             true_cfg_scale=4.0, num_inference_steps=2, generator=torch.Generator().manual_seed(777),
             output_type="latent", callback_on_step_end=keep)
        return captured["latents"]

    plain = final_latents()
    calls = []
    original = qk_norm_rope.joint_qkv
    monkeypatch.setattr(qk_norm_rope, "joint_qkv", lambda *a, **k: calls.append(1) or original(*a, **k))
    editor = FastEditor(edit, SpeedOptions(real_rope=True, fused_qk_norm_rope=True, attention_backend="native")).apply()
    try:
        fast = final_latents()
    finally:
        editor.restore()
    assert calls, "the fused path must actually run"
    assert float((fast - plain).norm() / plain.norm()) < 1e-5
