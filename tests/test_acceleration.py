"""The fast path's lossless switches give the authors' output, on a small in-process model (CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.acceleration import (  # noqa: E402
    Captioner,
    SpeedOptions,
    StepCache,
    prepare,
    prompt_image_for,
    reference_caption_ids,
)

JOB = dict(
    layers=1,
    resolution=640,
    num_inference_steps=2,
    true_cfg_scale=4.0,
    cfg_normalize=True,
    use_en_prompt=True,
    output_type="np",
)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("small", device="cpu", seed=0)


@pytest.fixture(scope="module")
def images():
    return [sample_image(640, 480, seed=1), sample_image(400, 600, seed=2), sample_image(512, 512, seed=3)]


@pytest.fixture(scope="module")
def plain_latents(pipe, images):
    """The authors' call on one job, computed once for the tests that compare against it."""
    return _final_latents(pipe, image=images[1], prompt="two cats", negative_prompt=" ")


def _final_latents(call, **kwargs):
    captured = {}

    def keep(pipe, i, t, kw):
        captured["latents"] = kw["latents"].clone()
        return {}

    call(generator=torch.Generator().manual_seed(777), callback_on_step_end=keep, **JOB, **kwargs)
    return captured["latents"]


def test_speed_options_are_all_off_on_cpu():
    cpu = SpeedOptions.for_device("cpu")
    assert cpu == SpeedOptions()
    assert not cpu.any_enabled and not cpu.lossy
    cuda = SpeedOptions.for_device("cuda")
    assert cuda.compile_blocks and cuda.cache_negative_embeds and cuda.caption_batch_invariant
    assert not cuda.lossy, "lossy switches are never on by default"


def test_all_off_fast_path_is_the_plain_call(pipe, images, plain_latents):
    fast = prepare(pipe, SpeedOptions.for_device("cpu"))
    out = _final_latents(fast, image=images[1], prompt="two cats", negative_prompt=" ")
    assert torch.equal(plain_latents, out)


def test_cached_negative_embeds_give_identical_output(pipe, images, plain_latents):
    fast = prepare(pipe, SpeedOptions(cache_negative_embeds=True))
    ref = plain_latents
    first = _final_latents(fast, image=images[1], prompt="two cats", negative_prompt=" ")
    calls = []
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, **k: calls.append(k.get("prompt")) or encode(*a, **k)
    try:
        second = _final_latents(fast, image=images[1], prompt="two cats", negative_prompt=" ")
    finally:
        del pipe.encode_prompt
    assert torch.equal(ref, first) and torch.equal(ref, second)
    assert " " not in calls, "the negative prompt was encoded again"
    assert list(fast._negative) == [(" ", 512)]


@pytest.mark.parametrize("static_cache", [False, True])
def test_batched_captions_equal_one_at_a_time(pipe, images, static_cache):
    options = SpeedOptions(caption_static_cache=static_cache, caption_batch_sizes=(1, 4))
    captioner = Captioner(pipe, options)
    prompt_images = [prompt_image_for(pipe, im, 640) for im in images]
    reference = [reference_caption_ids(pipe, p, True, max_new_tokens=16) for p in prompt_images]
    single = [captioner.generate_ids([p], True, 16)[0] for p in prompt_images]
    batched = captioner.generate_ids(prompt_images, True, 16)  # 3 images, padded to a batch of 4
    assert single == reference
    assert batched == reference
    assert len({len(p.tobytes()) for p in prompt_images}) > 1, "the images need different token counts"


def test_caption_cache_hits_and_feeds_the_job(pipe, images):
    fast = prepare(pipe, SpeedOptions(caption_cache_entries=8, caption_batch_sizes=(1, 4)))
    captions = fast.caption_batch(images[:2] + images[:1], use_en_prompt=True)
    assert captions[0] == captions[2]
    assert fast.captioner.generate_calls == 1 and fast.captioner.misses == 2
    assert fast.caption_batch(images[:1], use_en_prompt=True) == captions[:1]
    assert fast.captioner.hits == 1 and fast.captioner.generate_calls == 1
    # Other language, other key.
    fast.caption_batch(images[:1], use_en_prompt=False)
    assert fast.captioner.generate_calls == 2

    # An empty prompt makes the job use the cached caption instead of generating one.
    generated = []
    te = pipe.text_encoder
    te.generate = lambda *a, **k: generated.append(1) or type(te).generate(te, *a, **k)
    try:
        out = _final_latents(fast, image=images[0], prompt="", negative_prompt=" ")
    finally:
        del te.generate
    assert generated == [] and fast.captioner.hits == 2
    ref = _final_latents(pipe, image=images[0], prompt=captions[0], negative_prompt=" ")
    assert torch.equal(out, ref)


def test_real_rope_matches_the_complex_rotation():
    from diffusers.models.transformers import transformer_qwenimage as tq

    from worker.accel.rope import _ORIGINAL, apply_rotary_emb_qwen

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 40, 3, 16, generator=g)
    freqs = torch.polar(torch.ones(40, 8), torch.rand(40, 8, generator=g) * 6.28)
    expected = _ORIGINAL(x, freqs, use_real=False)
    got = apply_rotary_emb_qwen(x, torch.view_as_real(freqs), use_real=False)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(apply_rotary_emb_qwen(x, freqs, use_real=False), expected)  # complex: untouched
    assert tq.apply_rotary_emb_qwen in (_ORIGINAL, apply_rotary_emb_qwen)


def test_step_cache_schedule_reuses_only_inside_the_window():
    cache = StepCache(interval=2, window=(0.2, 0.8))
    reused = [s for s in range(50) if cache.reuse_step(s, 50)]
    assert reused == list(range(11, 40, 2))
    assert not any(cache.reuse_step(s, 50) for s in range(10)) and not cache.reuse_step(45, 50)


def test_attention_probe_checks_backends_against_a_head_chunked_reference():
    # The float32 reference is computed a few heads at a time (its full score matrix was the
    # worker's memory peak at start); chunked, it must still be the whole-tensor math result,
    # and SDPA's own choice must pass against it, with and without the padding mask.
    from worker.accel import attention

    q, k, v = (torch.randn(1, 200, 5, 16) for _ in range(3))
    mask = torch.ones(1, 1, 1, 200, dtype=torch.bool)
    mask[..., 10:20] = False
    for attn_mask in (None, mask):
        whole = attention.math_reference(q, k, v, attn_mask, heads_per_chunk=5)
        assert torch.allclose(attention.math_reference(q, k, v, attn_mask), whole, rtol=0, atol=1e-6)
    probes = attention.probe_backends(200, heads=5, head_dim=16, txt_len=20, device="cpu", candidates=("native",))
    assert [(p.name, p.ok, p.masked_ok) for p in probes] == [("native", True, True)]
    assert probes[0].rel_err < 1e-2  # bf16 rounding of the candidate's output
    assert attention.choose_backend(probes) == "native"
