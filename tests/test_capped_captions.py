"""Batched, batch-invariant auto-captions on capped workers (issue 17): the invariant captioner runs its
prefills and decode in the memory plan's caption phase, and a capped worker batches captions and looks
ahead like a full-memory one.

Real tiny pipeline (CPU, float32) placed with a real `PlacedPipeline`: its text layers stream from the
host copy exactly as on a GPU (plain copies instead of a side stream), so a capped worker must give
exactly the full-memory worker's tokens and layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from layerq.params import DecomposeParams  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.acceleration import SpeedOptions, prepare  # noqa: E402
from worker.memory_plan import (  # noqa: E402
    CAPTION_DECODE_BATCH, GIB, MARGIN_BYTES, MARGIN_FRACTION, MemoryPlan, ModelFootprint, choose_plan,
)
from worker.pipeline import DecomposePipeline  # noqa: E402

INVARIANT = SpeedOptions(caption_batch_invariant=True, caption_batch_sizes=(1, 8))
PARAMS = DecomposeParams(layers=2, num_inference_steps=2, seed=11, prompt="a poster")


def _pipe():
    pipe = build_pipeline("tiny", device="cpu", dtype=torch.float32, seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _images() -> list[Image.Image]:
    return [sample_image(640, 480, seed=1), Image.new("RGBA", (96, 96), (255, 0, 0, 255)),
            sample_image(400, 600, seed=2), Image.new("RGBA", (300, 900), (0, 0, 0, 255))]


@pytest.fixture(scope="module")
def full() -> DecomposePipeline:
    """The full-memory worker with the invariant captioner (the CUDA default)."""
    pipeline = DecomposePipeline(pipe=_pipe(), device=torch.device("cpu"), dtype=torch.float32, model_id="tiny",
                                 path="tiny")
    pipeline.runner = prepare(pipeline.pipe, INVARIANT)
    return pipeline


@pytest.fixture(scope="module")
def capped() -> DecomposePipeline:
    """A partial plan: one of two transformer blocks resident; no text layer resident while captions
    are prefilled, one of two while they decode (so both streaming and the decode's extra layer show)."""
    pipe = _pipe()
    fp = ModelFootprint.from_pipeline(pipe)
    need = MemoryPlan("partial", 0, fp, (640, 2)).denoise_reserve(640, 2) + 1.5 * fp.transformer_block_bytes
    budget = int((need + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1  # room for 1.5 blocks: one resident
    plan = MemoryPlan("partial", budget, fp, (640, 2), device_type="cpu", caption_text_layers=0,
                      caption_decode_text_layers=1)
    pipeline = DecomposePipeline.place(pipe, torch.device("cpu"), torch.float32, model_id="tiny", path="tiny",
                                       plan=plan)
    pipeline.placement.transformer_stack.set_resident(1)  # as a GPU worker's first denoising leaves it
    pipeline.runner = prepare(pipe, INVARIANT)
    return pipeline


def _phases(placement) -> list[tuple[str, bool, int]]:
    """Records (phase, vision tower + embedding on the device, resident text layers) after each switch."""
    seen: list[tuple[str, bool, int]] = []
    enter = placement.enter

    def recording(phase: str) -> None:
        enter(phase)
        seen.append((placement.phase, placement.text_prefill.on_device, len(placement.text_stack.resident)))

    placement.enter = recording
    return seen


def test_a_capped_worker_captions_a_batch_with_the_tokens_of_each_alone_and_of_the_full_worker(full, capped):
    images = _images()
    expected = full.caption_images(images, True, 640)
    assert len(set(expected)) >= 3, "the images must get different captions"
    authors = DecomposePipeline(pipe=full.pipe, device=torch.device("cpu"), dtype=torch.float32, model_id="tiny",
                                path="tiny")
    assert [authors.caption_images([im], True, 640)[0] for im in images[:2]] == expected[:2]  # float32: exact

    placement, captioner = capped.placement, capped.runner.captioner
    assert capped.batches_captions and capped.fast_captions
    seen = _phases(placement)
    try:
        entered, copied, batches = placement.captions_entered, placement.copier.bytes_copied, captioner.generate_calls
        together = capped.caption_images(images, True, 640)
        assert captioner.generate_calls - batches == 1, "four images, one decode batch"
        assert placement.captions_entered - entered == 1
        assert placement.copier.bytes_copied > copied, "the streamed text layers were fetched"
        # Prefills with the vision tower on and no resident layer; the decode without it and one layer
        # resident; on leaving, the caption phase as `generate` leaves it.
        assert seen == [("caption", True, 0), ("caption-decode", False, 1), ("caption", True, 0)]
        assert captioner._decoders == {}, "the KV buffers are freed with the batch"
        captioner._cache.clear()
        alone = [capped.caption_images([im], True, 640)[0] for im in images]
    finally:
        del placement.enter
    assert together == alone == expected


def test_after_the_captions_the_next_job_gets_its_resident_blocks_and_the_same_layers(full, capped):
    image = sample_image(96, 64, seed=4)
    placement = capped.placement
    denoising: list[set[int]] = []  # the transformer's resident blocks while each job denoises
    enter = placement.enter

    def recording(phase: str) -> None:
        enter(phase)
        if phase == "denoise":
            denoising.append(set(placement.transformer_stack.resident))

    placement.enter = recording
    try:
        before = capped.run(image, PARAMS)
        capped.runner.captioner._cache.clear()
        capped.caption_images(_images()[:3], True, 640)
        assert placement.phase == "caption" and placement.transformer_stack.resident == set()
        after = capped.run(image, PARAMS)
    finally:
        del placement.enter
    assert denoising[0] == denoising[-1] == {0}, "one block resident, before and after the captions"
    for a, b, c in zip(before, after, full.run(image, PARAMS)):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
    # An auto-captioned job with its caption handed over, as a look-ahead leaves it.
    auto = DecomposeParams(layers=2, num_inference_steps=2, seed=11, prompt="")
    caption = capped.caption_images([image], True, 640)[0]
    assert caption == full.caption_images([image], True, 640)[0]
    for a, b in zip(capped.run(image, auto, caption=caption), full.run(image, auto, caption=caption)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_capped_workers_look_ahead_and_show_batched_captions(capped):
    from layerq.config import Settings

    # `auto` follows fast captions; the invariant captioner counts (it did not: look-ahead was off).
    assert Settings.from_env({}, caption_ahead="auto").caption_ahead_on(capped.fast_captions)
    assert capped.caption_flavour.endswith("|invariant|cpu|float32")
    captions = capped.memory_plan["captions"]
    assert captions["batched"] == CAPTION_DECODE_BATCH == max(SpeedOptions().caption_batch_sizes)
    assert captions["text_layers_resident"] == {"prefill": 0, "decode": 1, "of": 2}


def test_the_plan_counts_the_caption_kv_buffers_and_the_room_the_decode_frees():
    real = ModelFootprint(
        transformer_block_bytes=int(0.633 * GIB), transformer_blocks=60, transformer_rest_bytes=int(0.075 * GIB),
        text_layer_bytes=int(0.434 * GIB), text_layers=28, text_rest_bytes=int(3.29 * GIB),
        vae_bytes=int(0.236 * GIB), transformer_inner_dim=3072, text_hidden_size=3584, vae_base_dim=96,
        dtype_bytes=2, text_kv_token_bytes=28 * 2 * 4 * 128 * 2,
        text_prefill_only_bytes=int(1.35e9) + 152064 * 3584 * 2,  # vision tower, embedding table
    )
    assert abs(real.caption_kv_bytes() / GIB - 0.875) < 0.01  # 8 x 4 kv heads x 2048 x 128 x 2 x 28 x 2 B
    uncounted = dataclasses.replace(real, text_kv_token_bytes=0, text_prefill_only_bytes=0)
    plan, before = choose_plan(14 * GIB, real), choose_plan(14 * GIB, uncounted)
    assert plan.caption_text_layers < before.caption_text_layers  # the prefilled rows' KV
    assert plan.caption_text_layers < plan.decode_text_layers < 28  # vision + embedding off the GPU
    # Each row goes into the buffers right after its prefill, so the decode holds the buffers once
    # (two more layers than when all rows' KV waited for the decode, 19 of 28).
    assert (plan.caption_text_layers, plan.decode_text_layers) == (14, 21)
    assert choose_plan(22 * GIB, real).decode_text_layers == 28
    assert any("caption decoding streams" in note for note in plan.notes)


def test_each_row_goes_into_the_buffers_after_its_prefill_and_is_not_kept(capped, monkeypatch):
    """Only one row's own KV exists at a time: the plan counts the KV buffers and one row, not 8 rows."""
    import weakref

    from worker.accel import caption_decode

    events, rows = [], []
    real_prefill, real_load = caption_decode.prefill, caption_decode.FixedBatchDecoder.load

    def prefill(*args, **kwargs):
        events.append(("prefill", sum(r() is not None for r in rows)))  # earlier rows still alive
        row = real_prefill(*args, **kwargs)
        rows.append(weakref.ref(row))
        return row

    def load(self, slot, row, max_new_tokens):
        events.append(("load", slot))
        return real_load(self, slot, row, max_new_tokens)

    monkeypatch.setattr(caption_decode, "prefill", prefill)
    monkeypatch.setattr(caption_decode.FixedBatchDecoder, "load", load)
    capped.runner.captioner._cache.clear()
    capped.caption_images(_images()[:3], True, 640)
    assert events == [("prefill", 0), ("load", 0), ("prefill", 0), ("load", 1), ("prefill", 0), ("load", 2)]
    assert all(r() is None for r in rows)


def test_leaving_the_caption_decode_drops_its_extra_layers_before_the_vision_tower_comes_back(capped):
    """Both at once would exceed the plan (a 14 GiB H200 run ran out of memory here, 2026-12-02)."""
    placement = capped.placement
    prefill_modules = placement.text_prefill
    ready = prefill_modules.ready
    layers_when_loaded = []

    def recording() -> None:
        layers_when_loaded.append(len(placement.text_stack.resident))
        ready()

    prefill_modules.ready = recording
    try:
        capped.runner.captioner._cache.clear()
        capped.caption_images(_images()[:2], True, 640)
    finally:
        del prefill_modules.ready
    assert layers_when_loaded and max(layers_when_loaded) <= placement.plan.caption_text_layers


def test_a_tied_embedding_stays_on_the_gpu_while_captions_decode():
    from worker.block_streaming import _prefill_only_modules

    pipe = _pipe()
    te = pipe.text_encoder
    embed = te.model.language_model.embed_tokens
    assert embed in _prefill_only_modules(te)
    te.lm_head.weight = embed.weight  # the output head reads it every step
    assert embed not in _prefill_only_modules(te)
    assert te.model.visual in _prefill_only_modules(te)


def test_text_layers_all_resident_in_a_placement_count_as_still_for_a_cuda_graph(capped):
    """A plan with room for every text layer while captioning keeps them still for the whole batch: the
    decode may then capture its step in a CUDA graph (a new decoder per batch); one streamed layer, or
    one dropped, and it must not."""
    from worker.accel.caption_decode import layers_are_resident
    from worker.block_streaming import text_layers

    stack = capped.placement.text_stack
    layers = text_layers(capped.pipe.text_encoder)
    before = len(stack.resident)
    try:
        stack.set_resident(len(stack))
        assert layers_are_resident(layers)
        stack.set_resident(len(stack) - 1)
        assert not layers_are_resident(layers)
        stack.drop_all()
        assert not layers_are_resident(layers)
    finally:
        stack.set_resident(before)
    plan = capped.placement.plan
    assert plan.caption_decode_drops_prefill  # 0 of 2 layers at prefill: the decode makes room
    assert not dataclasses.replace(plan, caption_text_layers=2).caption_decode_drops_prefill


def test_a_capped_worker_captions_waiting_jobs_ahead_in_one_batch(full, capped, redis_url, tmp_path):
    """Real Redis, real job and caption stores, local storage: a capped worker about to caption its
    job (look-ahead `auto`) captions the waiting auto-caption jobs with it in one decode batch, in the
    plan's caption phase, and leaves each its own caption."""
    import io
    import uuid

    from layerq.config import Settings
    from layerq.messages import DecomposeMessage
    from storage.services import Services
    from worker.caption_ahead import caption_for
    from worker.runtime import WorkerRuntime

    settings = Settings.from_env({}, redis_url=redis_url, storage_dir=str(tmp_path), caption_ahead="auto",
                                 signing_secret="test", key_prefix=f"t{uuid.uuid4().hex[:8]}")
    services = Services.open(settings)
    rt = WorkerRuntime(services=services, liveness=None, pipeline=capped, name="capped")
    colours = [(255, 0, 0), (0, 0, 255), (0, 200, 0), (250, 250, 0)]
    ids, inputs = [], []
    for colour in colours:
        job_id = uuid.uuid4().hex
        data = io.BytesIO()
        Image.new("RGBA", (96, 96), (*colour, 255)).save(data, "PNG")
        services.store.put(f"jobs/{job_id}/input.png", data.getvalue())
        services.jobs.create(job_id, kind="decompose", queue="decompose", params={"prompt": "", "layers": 2},
                             input_key=f"jobs/{job_id}/input.png")
        ids.append(job_id)
        inputs.append(data.getvalue())
    images = [Image.open(io.BytesIO(b)) for b in inputs]
    alone = [full.caption_images([im], True, 640)[0] for im in images]
    assert len(set(alone)) == len(colours), "the colours must get different captions"

    captioner, placement = capped.runner.captioner, capped.placement
    captioner._cache.clear()
    batches, entered = captioner.generate_calls, placement.captions_entered
    own_msg = DecomposeMessage(job_id=ids[0], input_key=f"jobs/{ids[0]}/input.png",
                               params=DecomposeParams(layers=2, num_inference_steps=2, seed=1, prompt=""))
    services.jobs.begin_attempt(ids[0], max_deliveries=3, worker="capped")  # the own job is running
    own = caption_for(rt, own_msg, images[0], inputs[0])
    assert own == alone[0]
    assert captioner.generate_calls - batches == 1 and placement.captions_entered - entered == 1
    for job_id, text in zip(ids[1:], alone[1:]):
        entry = services.captions.get(job_id)
        assert entry is not None and entry["text"] == text and entry["with"] == ids[0], entry
