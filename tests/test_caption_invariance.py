"""Batch-invariant captions (worker/accel/caption_decode.py): an image's tokens do not depend on its
batch-mates, its row, or earlier calls, and in float32 they are the authors' `generate` tokens.

The tiny model: its captions differ from image to image and some meet an end token early. Its generation
config is set like the real Qwen2.5-VL's (sampling with top_k=1, a repetition penalty), with a stronger
penalty so that getting it wrong changes tokens. Bit-identity in bf16 on a GPU: bench/GPU_NOTES.md.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from worker.accel.caption_decode import Selection, Unsupported, fixed_length  # noqa: E402
from worker.accel.captioner import Captioner, prompt_image_for, reference_caption_ids  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.acceleration import SpeedOptions  # noqa: E402

TOKENS = 24
REAL_LIKE = dict(do_sample=True, top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.3)


def _pipe(dtype):
    pipe = build_pipeline("tiny", device="cpu", dtype=dtype, seed=0)
    for name, value in REAL_LIKE.items():
        setattr(pipe.text_encoder.generation_config, name, value)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return _pipe(torch.float32)


def _images(pipe):
    sources = [
        sample_image(640, 480, seed=1), sample_image(400, 600, seed=2), Image.new("RGBA", (640, 640), (255, 0, 0, 255)),
        Image.new("RGBA", (300, 900), (0, 0, 0, 255)), Image.new("RGBA", (900, 300), (255, 255, 255, 255)),
        sample_image(512, 512, seed=3), sample_image(700, 500, seed=4), sample_image(500, 700, seed=5),
    ]
    return [prompt_image_for(pipe, s, 640) for s in sources]


def _captioner(pipe, **kw):
    return Captioner(pipe, SpeedOptions(caption_batch_invariant=True, caption_batch_sizes=(1, 8), **kw))


@pytest.mark.parametrize("use_en_prompt", [True, False])
def test_fixed_batch_decoder_gives_the_authors_tokens_in_float32(pipe, use_en_prompt):
    images = _images(pipe)[:5]
    torch.manual_seed(0)
    reference = [reference_caption_ids(pipe, im, use_en_prompt, max_new_tokens=TOKENS) for im in images]
    captioner = _captioner(pipe)
    assert [captioner.generate_ids([im], use_en_prompt, TOKENS)[0] for im in images] == reference
    assert captioner.generate_ids(images, use_en_prompt, TOKENS) == reference
    assert len({tuple(r) for r in reference}) >= 3, "the images must get different captions"
    if not use_en_prompt:  # the end-token case: rows that stop early next to rows that do not
        assert {len(r) for r in reference} > {TOKENS} and TOKENS in {len(r) for r in reference}


def test_the_repetition_penalty_is_applied(pipe):
    image = _images(pipe)[2]
    gc = pipe.text_encoder.generation_config
    with_penalty = _captioner(pipe).generate_ids([image], True, TOKENS)[0]
    gc.repetition_penalty = 1.0
    try:
        without = _captioner(pipe).generate_ids([image], True, TOKENS)[0]
        assert without == reference_caption_ids(pipe, image, True, max_new_tokens=TOKENS)
    finally:
        gc.repetition_penalty = REAL_LIKE["repetition_penalty"]
    assert with_penalty != without


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_tokens_alone_in_any_batch_and_run_after_run(dtype):
    pipe = _pipe(dtype)
    images = _images(pipe)
    a, b = images[2], images[1]  # with the Chinese prompt A runs all 24 tokens, B ends at an end token
    captioner = _captioner(pipe)
    alone_a = [captioner.generate_ids([a], False, TOKENS)[0] for _ in range(2)]
    alone_b = captioner.generate_ids([b], False, TOKENS)[0]
    mates = [images[0]] + images[3:]
    batches = {
        "A first, B 4th": [a] + mates[:2] + [b] + mates[2:],
        "A last, other mates": mates[::-1] + [b, a],
        "short batch, A in the middle": [mates[3], a, b],
        "A twice": [a, mates[0], a],
    }
    for name, batch in batches.items():
        ids = captioner.generate_ids(batch, False, TOKENS)
        for image, row in zip(batch, ids):
            if image is a:
                assert row == alone_a[0], name
            if image is b:
                assert row == alone_b, name
    assert alone_a[0] == alone_a[1]
    assert alone_a[0] != alone_b and len(alone_b) < TOKENS, "B meets an end token early; A does not"
    assert len(alone_a[0]) == TOKENS
    assert captioner.generate_calls == 3 + len(batches)


def test_prompts_too_long_for_the_base_length_decode_at_their_own(pipe):
    images = _images(pipe)[:5]
    prompt = pipe.image_caption_prompt_en
    lengths = [int(pipe.vl_processor(text=[prompt], images=[im], return_tensors="pt")["input_ids"].shape[1])
               for im in images]
    base = sorted(lengths)[2] + TOKENS  # some prompts fit, the others need a longer buffer
    groups = {fixed_length(n, TOKENS, base) for n in lengths}
    assert len(groups) == 2 and base in groups
    captioner = _captioner(pipe, caption_max_cache_len=base)
    reference = [reference_caption_ids(pipe, im, True, max_new_tokens=TOKENS) for im in images]
    assert captioner.generate_ids(images, True, TOKENS) == reference
    assert sorted(captioner._decoders) == sorted(groups)


def test_generation_settings_that_are_not_greedy_are_refused(pipe):
    gc = pipe.text_encoder.generation_config
    assert Selection.from_config(gc).repetition_penalty == REAL_LIKE["repetition_penalty"]
    for name, value in (("top_k", 50), ("no_repeat_ngram_size", 3), ("num_beams", 2)):
        old = getattr(gc, name)
        setattr(gc, name, value)
        try:
            with pytest.raises(Unsupported, match=name):
                Selection.from_config(gc)
        finally:
            setattr(gc, name, old)


def test_a_config_that_is_not_greedy_falls_back_to_generate(pipe):
    images = _images(pipe)[:2]
    gc = pipe.text_encoder.generation_config
    gc.no_repeat_ngram_size = 2
    try:
        reference = [reference_caption_ids(pipe, im, True, max_new_tokens=TOKENS) for im in images]
        captioner = _captioner(pipe)
        assert captioner.generate_ids(images, True, TOKENS) == reference
    finally:
        gc.no_repeat_ngram_size = 0
    assert captioner._decoders == {}


def test_streamed_text_layers_decode_eagerly_with_the_same_tokens(pipe):
    """Under a memory plan the decoder layers are streaming wrappers whose weights move: the decode
    calls them as modules (their fetch runs) and never captures a graph; the tokens stay the same."""
    from worker.accel.caption_decode import layers_are_resident
    from worker.block_streaming import PlacedPipeline, text_layers
    from worker.memory_plan import MemoryPlan, ModelFootprint

    streamed_pipe = _pipe(torch.float32)
    images = _images(streamed_pipe)[:3]
    expected = _captioner(pipe).generate_ids(images, True, TOKENS)
    plan = MemoryPlan("partial", 8 * 2**30, ModelFootprint.from_pipeline(streamed_pipe), (640, 2), device_type="cpu")
    placed = PlacedPipeline(streamed_pipe, plan, torch.device("cpu"))
    assert not layers_are_resident(text_layers(streamed_pipe.text_encoder))
    assert layers_are_resident(text_layers(pipe.text_encoder))
    copied = placed.copier.bytes_copied
    assert _captioner(streamed_pipe).generate_ids(images, True, TOKENS) == expected
    assert placed.copier.bytes_copied > copied, "the streamed layers were fetched"


def test_layers_stay_graph_capturable_after_the_pipeline_encodes_a_prompt():
    """The pipeline's `encode_prompt` asks the text encoder for hidden states, and transformers then
    leaves an output-capturing hook on every decoder layer for good. Those hooks move no weights: the
    decode step must still be captured in a CUDA graph (counted as "hooked", every real worker decoded
    its captions eagerly, 2.5x slower per token on an H200, run 15). Other hooks still count."""
    from worker.accel.caption_decode import layers_are_resident
    from worker.block_streaming import text_layers

    fresh = _pipe(torch.float32)
    layers = text_layers(fresh.text_encoder)
    with torch.inference_mode():
        fresh.encode_prompt(prompt="a poster with a title", device="cpu")
    assert any(m._forward_hooks for m in layers[0].modules()), "transformers left its hooks (the case tested)"
    assert layers_are_resident(layers)
    handle = layers[0].mlp.register_forward_pre_hook(lambda module, args: None)  # e.g. a weight fetch
    try:
        assert not layers_are_resident(layers)
    finally:
        handle.remove()
