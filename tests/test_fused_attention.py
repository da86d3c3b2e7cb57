"""Round-2 lossless switches on CPU: fused Q/K/V, the joint-attention processor, the FA4 hook, GELU epilogue.

float32 on the small synthetic model: a fused GEMM sums the same products as three separate ones, so the
output matches the authors' call to float32 rounding (GPU bf16 numbers: bench/GPU_NOTES.md, round 2).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.accel import attention, joint_attention  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.accel.transformer import fuse_gelu_epilogue, gelu_modules, unfuse_gelu_epilogue  # noqa: E402
from worker.acceleration import SpeedOptions, prepare  # noqa: E402

JOB = dict(layers=1, resolution=640, num_inference_steps=2, true_cfg_scale=4.0, cfg_normalize=True,
           use_en_prompt=True, output_type="np")


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("small", device="cpu", seed=0)


def _final_latents(call, **kwargs):
    captured = {}

    def keep(pipe, i, t, kw):
        captured["latents"] = kw["latents"].clone()
        return {}

    call(image=sample_image(400, 600, seed=2), prompt="two cats", negative_prompt=" ",
         generator=torch.Generator().manual_seed(777), callback_on_step_end=keep, **JOB, **kwargs)
    return captured["latents"]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_fused_qkv_gives_the_authors_output_and_keeps_one_copy_of_the_weights(pipe):
    plain = _final_latents(pipe)
    n_params = sum(p.numel() for p in pipe.transformer.parameters())
    fast = prepare(pipe, SpeedOptions(fused_qkv=True))
    try:
        attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
        assert isinstance(attn.processor, joint_attention.JointAttnProcessor)
        assert attn.to_qkv.out_features == 3 * attn.to_q.out_features
        # The original projections are views into the fused weight: no second copy.
        assert attn.to_k.weight.untyped_storage().data_ptr() == attn.to_qkv.weight.untyped_storage().data_ptr()
        assert torch.equal(attn.to_qkv.weight[attn.to_q.out_features:][: attn.to_k.out_features], attn.to_k.weight)
        fused = _final_latents(fast)
    finally:
        fast.restore()
    assert _rel(fused, plain) < 1e-5
    assert not isinstance(attn.processor, joint_attention.JointAttnProcessor)
    assert getattr(attn, "to_qkv", None) is None
    assert sum(p.numel() for p in pipe.transformer.parameters()) == n_params
    assert torch.equal(_final_latents(pipe), plain), "restore() must give the authors' call back exactly"


def _sdpa_bshd(q, k, v):
    out = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
    return out.transpose(1, 2)


def test_unmasked_kernel_is_used_only_without_a_padding_mask(pipe):
    attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
    calls = []

    def kernel(q, k, v):
        calls.append(q.shape)
        return _sdpa_bshd(q, k, v)

    g = torch.Generator().manual_seed(0)
    dim = attn.inner_dim
    img = torch.randn(1, 48, dim, generator=g)
    txt = torch.randn(1, 7, dim, generator=g)
    reference = type(attn.processor)()
    ours = joint_attention.JointAttnProcessor(kernel)
    want = reference(attn, img, txt)
    got = ours(attn, img, txt)
    assert calls == [torch.Size([1, 55, attn.heads, dim // attn.heads])]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    mask = torch.ones(1, 7, dtype=torch.bool)
    mask[:, 5:] = False
    got_masked = ours(attn, img, txt, encoder_hidden_states_mask=mask)
    assert len(calls) == 1, "a masked call must not go to the unmasked kernel"
    for a, b in zip(got_masked, reference(attn, img, txt, encoder_hidden_states_mask=mask)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_fa4_is_probed_but_unavailable_on_cpu():
    probes = attention.probe_backends(64, heads=2, head_dim=16, txt_len=8, device="cpu",
                                      candidates=(attention.FA4, "native"))
    assert probes[0].name == "fa4" and not probes[0].ok and probes[0].note
    assert attention.choose_backend(probes) == "native"


def test_gelu_epilogue_keeps_the_modules_own_forward_on_cpu(pipe):
    # On CPU `_addmm_activation` means the exact (erf) GELU, not the model's tanh one: CPU keeps the
    # module's forward. The CUDA path is checked against the authors' call on the GPU (bench).
    plain = _final_latents(pipe)
    assert fuse_gelu_epilogue(pipe.transformer) == len(gelu_modules(pipe.transformer)) > 0
    try:
        assert torch.equal(_final_latents(pipe), plain)
    finally:
        unfuse_gelu_epilogue(pipe.transformer)
    assert all("forward" not in m.__dict__ for m in gelu_modules(pipe.transformer))


def test_cuda_defaults_include_the_round_two_switches():
    cuda = SpeedOptions.for_device("cuda")
    assert cuda.gelu_epilogue and cuda.attention_backend == "auto" and not cuda.lossy
    assert not cuda.fused_qkv, "no measured gain on an H200 (bench/GPU_NOTES.md, run 9)"
    assert not SpeedOptions.for_device("cpu").fused_qkv
