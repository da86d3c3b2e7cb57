"""Batch-invariant captions: an image's tokens do not depend on its batch-mates (shape fixed per image).

On CPU in float32 every path gives the authors' tokens anyway; these tests pin the plumbing (fixed
prompt padding, batch padding, per-image vision tower). Invariance in bf16 on a GPU: bench/GPU_NOTES.md.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.accel.captioner import Captioner, per_image_vision, prompt_image_for, reference_caption_ids  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.acceleration import SpeedOptions  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("small", device="cpu", seed=0)


def test_image_gets_the_same_tokens_alone_and_in_any_batch(pipe):
    images = [prompt_image_for(pipe, sample_image(w, h, seed=s), 640)
              for w, h, s in ((640, 480, 1), (400, 600, 2), (512, 512, 3))]
    options = SpeedOptions(caption_batch_invariant=True, caption_batch_sizes=(1, 4), caption_max_cache_len=2048)
    captioner = Captioner(pipe, options)
    groups = captioner._invariant_groups(images, True)
    assert list(groups) == [2048 - 512] and groups[2048 - 512] == [0, 1, 2]
    calls = []
    generate = pipe.text_encoder.generate
    pipe.text_encoder.generate = lambda **kw: calls.append(kw["input_ids"].shape) or generate(**kw)
    try:
        alone = [captioner.generate_ids([im], True, 8)[0] for im in images]
        together = captioner.generate_ids(images, True, 8)
        reordered = captioner.generate_ids(images[::-1], True, 8)[::-1]
    finally:
        del pipe.text_encoder.generate
    assert alone == together == reordered
    assert alone == [reference_caption_ids(pipe, im, True, max_new_tokens=8) for im in images]
    assert set(calls) == {torch.Size([4, 1536])}, "every generate runs at the fixed batch and prompt shape"


def test_per_image_vision_gives_the_batched_features(pipe):
    images = [prompt_image_for(pipe, sample_image(w, h, seed=1), 640) for w, h in ((640, 480), (400, 600))]
    inputs = pipe.vl_processor(text=["<|vision_start|><|image_pad|><|vision_end|>"] * 2, images=images,
                               padding=True, return_tensors="pt")
    model = pipe.text_encoder.model
    batched = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    with per_image_vision(pipe.text_encoder):
        single = model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    assert "get_image_features" not in model.__dict__
    assert len(single) == len(batched) == 2
    for a, b in zip(single, batched):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
