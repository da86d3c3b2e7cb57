"""A caption written before the pipeline call (by this job, or ahead by another worker) is used
exactly where the pipeline would write its own: same layers, no second caption. Real tiny pipeline,
CPU, float32."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from layerq.params import DecomposeParams  # noqa: E402
from worker.acceleration import SpeedOptions, prepare  # noqa: E402
from worker.pipeline import DecomposePipeline  # noqa: E402

PARAMS = DecomposeParams(layers=2, num_inference_steps=2, seed=7)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir) -> DecomposePipeline:
    return DecomposePipeline.load(str(tiny_model_dir), device="cpu")


def flat(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGBA", (96, 96), (*colour, 255))


def counting_generate(pipe) -> list[int]:
    calls: list[int] = []
    generate = pipe.text_encoder.generate
    pipe.text_encoder.generate = lambda *a, **k: calls.append(1) or generate(*a, **k)
    return calls


def encoded_prompts(pipe) -> list[str]:
    """The positive prompts the pipeline encodes (the negative one is `" "`)."""
    prompts: list[str] = []
    encode = pipe.encode_prompt
    pipe.encode_prompt = lambda *a, **k: prompts.append(k.get("prompt", a[0] if a else None)) or encode(*a, **k)
    return prompts


def test_a_handed_over_caption_is_what_the_pipeline_would_have_written(pipeline):
    image = flat((0, 0, 255))
    prompts = encoded_prompts(pipeline.pipe)
    try:
        own = pipeline.run(image, PARAMS)  # the pipeline captions the image itself
        caption = pipeline.caption_images([image], True, 640)[0]
        calls = counting_generate(pipeline.pipe)
        try:
            handed = pipeline.run(image, PARAMS, caption=caption)
            pipeline.run(image, PARAMS, caption="a blue square")
        finally:
            del pipeline.pipe.text_encoder.generate
    finally:
        del pipeline.pipe.encode_prompt
    assert calls == [], "a handed-over caption is not written again"
    assert "get_image_caption" not in pipeline.pipe.__dict__  # handed over for that call only
    assert [p for p in prompts if p != " "] == [caption, caption, "a blue square"]
    for a, b in zip(own, handed):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert pipeline.caption_flavour.endswith("|reference|cpu|float32") and not pipeline.batches_captions


def test_batched_captions_through_the_runner_match_each_image_alone(pipeline):
    images = [flat(c) for c in ((255, 0, 0), (0, 200, 0), (250, 250, 0))]
    alone = pipeline.caption_images(images, True, 640)  # the authors' call, one image at a time
    pipeline.runner = prepare(pipeline.pipe, SpeedOptions(caption_batch_invariant=True, caption_batch_sizes=(1, 4)))
    try:
        assert pipeline.batches_captions and pipeline.caption_flavour.endswith("|invariant|cpu|float32")
        calls = counting_generate(pipeline.pipe)
        prompts = encoded_prompts(pipeline.pipe)
        try:
            before = pipeline.runner.captioner.generate_calls
            together = pipeline.caption_images(images, True, 640)
            batches = pipeline.runner.captioner.generate_calls - before
            pipeline.run(images[0], PARAMS, caption=together[0])
        finally:
            del pipeline.pipe.text_encoder.generate, pipeline.pipe.encode_prompt
        # The invariant captioner decodes with its own loop (worker/accel/caption_decode.py), not
        # `generate`: three images are one decode batch and no `generate` call at all.
        assert batches == 1 and calls == [], "three images, one batch"
        assert together == alone
        assert [p for p in prompts if p != " "] == [together[0]]  # the fast runner took it too
    finally:
        pipeline.runner = None


def test_redis_down_while_looking_ahead_means_captioning_alone(pipeline, redis_url, tmp_path):
    """Looking ahead is on, but Redis (the stored captions, the queues) cannot be reached: the job is
    still captioned, alone, exactly as without looking ahead."""
    import dataclasses
    import io
    import socket

    import redis

    from layerq.config import Settings
    from layerq.messages import DecomposeMessage
    from storage.captions import CaptionStore
    from storage.jobs import JobStore
    from storage.services import Services
    from worker.caption_ahead import caption_for
    from worker.runtime import WorkerRuntime

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({}, redis_url=redis_url, storage_dir=str(tmp_path), caption_ahead="1",
                                 signing_secret="test")
    dead = redis.Redis(port=port, decode_responses=True, socket_connect_timeout=0.5)
    services = dataclasses.replace(Services.open(settings), jobs=JobStore(dead), captions=CaptionStore(dead))
    rt = WorkerRuntime(services=services, liveness=None, pipeline=pipeline, name="w")
    image = flat((250, 250, 0))
    data = io.BytesIO()
    image.save(data, "PNG")
    msg = DecomposeMessage(job_id="a" * 32, input_key=f"jobs/{'a' * 32}/input.png", params=PARAMS)
    assert caption_for(rt, msg, image, data.getvalue()) == pipeline.caption_images([image], True, 640)[0]
