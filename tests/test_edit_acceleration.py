"""The edit pipeline with the decomposition path's transformer switches (worker/accel/editor.py), on CPU.

float32 on the small synthetic edit model (the real classes, random weights): the switches that run on a
CPU give the authors' final latents to float32 rounding, `restore()` gives the plain pipeline back, and a
CPU load applies nothing at all. GPU numbers: bench/edit_gpu.py, bench/GPU_NOTES.md.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.accel import joint_attention  # noqa: E402
from worker.accel.editor import FastEditor, edit_options, prepare_edit  # noqa: E402
from worker.accel.options import SpeedOptions  # noqa: E402
from worker.accel.synthetic import sample_image  # noqa: E402
from worker.models import build_edit  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return build_edit("small", device="cpu")


def _final_latents(pipe):
    captured = {}

    def keep(p, i, t, kw):
        captured["latents"] = kw["latents"].clone()
        return {}

    pipe(image=[sample_image(96, 64, seed=2).convert("RGB")], prompt="make it blue", negative_prompt=" ",
         true_cfg_scale=4.0, num_inference_steps=2, generator=torch.Generator().manual_seed(777),
         output_type="latent", callback_on_step_end=keep)
    return captured["latents"]


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_transformer_switches_give_the_authors_edit_and_restore_it(pipe):
    plain = _final_latents(pipe)
    editor = FastEditor(pipe, SpeedOptions(real_rope=True, fused_qkv=True, attention_backend="native")).apply()
    try:
        attn = joint_attention.joint_attention_modules(pipe.transformer)[0]
        assert isinstance(attn.processor, joint_attention.JointAttnProcessor)
        assert "forward" in pipe.transformer.pos_embed.__dict__  # real RoPE tables on the plain 2-D RoPE
        fast = _final_latents(pipe)
    finally:
        editor.restore()
    assert _rel(fast, plain) < 1e-5
    assert torch.equal(_final_latents(pipe), plain), "restore() must give the authors' call back exactly"


def test_a_cpu_load_changes_nothing(pipe):
    processors = [m.processor for m in joint_attention.joint_attention_modules(pipe.transformer)]
    editor = prepare_edit(pipe)
    assert not editor.options.any_enabled and editor.warmup_s == {}
    assert editor.attention_backend is None
    assert [m.processor for m in joint_attention.joint_attention_modules(pipe.transformer)] == processors


def test_switches_that_do_not_apply_to_edits_are_off():
    cuda = edit_options(SpeedOptions.for_device("cuda").replace(step_cache_interval=2, num_inference_steps=20))
    # The edit model encodes the negative prompt together with the condition image: no per-string cache.
    assert not cuda.cache_negative_embeds and not cuda.caption_static_cache and not cuda.caption_compile
    assert not cuda.lossy
    # The transformer switches stay as the decomposition path has them.
    assert cuda.compile_blocks and cuda.real_rope and cuda.gelu_epilogue and cuda.compile_tune_kernels
    assert cuda.attention_backend == "auto"


def test_probe_shape_is_the_edit_jobs_joint_sequence(pipe):
    side = 1024 // (pipe.vae_scale_factor * 2)
    assert FastEditor(pipe, SpeedOptions())._probe_seq_len() == 2 * side * side + 256
