"""Memory plans (issue 17): the budget → plan arithmetic, the plan a worker picks from
LAYERQ_GPU_MEMORY_GIB, and jobs through the streamed placement on the real tiny pipeline (CPU).

The arithmetic tests use the full-size model's footprint as measured on an H200
(bench/results/2026-12-01_h200_issue17_memory_plans.json). The pipeline tests run the real
diffusers/transformers classes: on a CPU the streaming code runs with plain copies, so a streamed
job must give exactly the full-residency job's layers.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import requests

from layerq.client import LayerqClient
from layerq.config import Settings
from layerq.params import DecomposeParams
from layerq.sample import sample_png
from worker.memory_plan import (
    GIB,
    MARGIN_BYTES,
    MARGIN_FRACTION,
    MemoryPlan,
    ModelFootprint,
    PlanDoesNotFit,
    choose_plan,
    plan_for,
    resident_indices,
    usable_bytes,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The full-size model in bf16, as `ModelFootprint.from_pipeline` read it on the GPU.
REAL = ModelFootprint(
    transformer_block_bytes=int(0.633 * GIB), transformer_blocks=60, transformer_rest_bytes=int(0.075 * GIB),
    text_layer_bytes=int(0.434 * GIB), text_layers=28, text_rest_bytes=int(3.29 * GIB), vae_bytes=int(0.236 * GIB),
    transformer_inner_dim=3072, text_hidden_size=3584, vae_base_dim=96, dtype_bytes=2,
)
CARDS_GIB = (141, 80, 46, 40, 22, 16, 14, 12)


def test_a_card_that_holds_everything_gets_the_full_plan():
    for gib in (141, 80):
        plan = choose_plan(gib * GIB, REAL)
        d = plan.describe()
        assert (d["name"], d["resident_blocks"], d["streamed_blocks"], d["text_encoder"]) == ("full", 60, 0, "gpu")
        assert d["pinned_host_gib"] == 0 and d["vae_tiling"] is False


def test_smaller_cards_keep_what_fits_and_stream_the_rest():
    plans = {gib: choose_plan(gib * GIB, REAL) for gib in CARDS_GIB}
    resident = [plans[gib].resident_blocks for gib in CARDS_GIB]
    assert resident == sorted(resident, reverse=True)  # less memory never keeps more blocks
    assert plans[46].name == "transformer-resident" and plans[46].resident_blocks == 60
    assert plans[22].name == "partial" and 0 < plans[22].resident_blocks < 60
    assert plans[14].resident_blocks < plans[22].resident_blocks
    for gib, plan in plans.items():
        d = plan.describe()
        assert d["resident_blocks"] + d["streamed_blocks"] == 60
        if plan.full:
            continue
        # What the denoising phase holds stays inside the budget less the margin.
        held = plan.resident_blocks * REAL.transformer_block_bytes + plan.denoise_reserve(640, 4)
        assert held <= usable_bytes(gib * GIB) < held + REAL.transformer_block_bytes or plan.resident_blocks == 60
        # Every moving weight is pinned on the host: all blocks and the whole text encoder.
        assert plan.pinned_host_bytes == 60 * REAL.transformer_block_bytes + REAL.text_encoder_bytes
        assert d["pinned_host_gib"] == pytest.approx(53.4, abs=0.1)


def test_captions_keep_as_many_text_layers_as_fit():
    assert choose_plan(22 * GIB, REAL).caption_text_layers == 28
    small = choose_plan(14 * GIB, REAL)
    assert 0 < small.caption_text_layers < 28
    assert any("caption decoding streams" in note for note in small.notes)


def test_bigger_buckets_keep_fewer_blocks_and_tile_the_vae_only_where_needed():
    both = ((640, 4), (1024, 4))
    plan = choose_plan(46 * GIB, REAL, both)
    assert plan.resident_blocks_for(1024, 4) < plan.resident_blocks_for(640, 4)
    assert plan.decode_blocks_for(1024, 4) < plan.resident_blocks_for(1024, 4)  # the decode needs more room
    assert plan.describe()["sized_for"] == "1024x4" and plan.vae_tiling is False
    tight = choose_plan(16 * GIB, REAL, both)
    assert tight.vae_tiling  # 1024 × 5 frames does not decode in ~14 GiB untiled
    assert not choose_plan(16 * GIB, REAL).vae_tiling  # 640 does


def test_a_budget_below_the_streamed_minimum_is_refused_with_the_numbers():
    with pytest.raises(PlanDoesNotFit, match=r"1024-bucket job with 8 layers needs .* GiB"):
        choose_plan(8 * GIB, REAL, ((1024, 8),))
    plan = choose_plan(12 * GIB, REAL)
    with pytest.raises(PlanDoesNotFit):
        plan.resident_blocks_for(1024, 10)


def test_streamed_blocks_are_spread_between_resident_ones():
    assert resident_indices(6, 6) == list(range(6))
    assert resident_indices(6, 0) == []
    for total, keep in ((60, 26), (60, 13), (60, 57), (28, 16), (2, 1), (7, 3)):
        kept = resident_indices(total, keep)
        assert len(kept) == keep and kept == sorted(set(kept)) and all(0 <= i < total for i in kept)
    streamed = sorted(set(range(60)) - set(resident_indices(60, 30)))
    assert max(b - a for a, b in zip(streamed, streamed[1:])) == 2  # every other block, not one half


def test_the_plan_comes_from_layerq_gpu_memory_gib_or_the_card():
    settings = Settings.from_env(environ={"LAYERQ_GPU_MEMORY_GIB": "22"})
    assert settings.gpu_memory_gib == 22.0
    plan = plan_for(REAL, memory_gib=settings.gpu_memory_gib, device_type="cuda", card_free_bytes=139 * GIB,
                    buckets=((640, 4),))
    assert (plan.source, plan.budget_bytes, plan.name) == ("LAYERQ_GPU_MEMORY_GIB", 22 * GIB, "partial")
    card = plan_for(REAL, memory_gib=Settings.from_env(environ={}).gpu_memory_gib, device_type="cuda",
                    card_free_bytes=44 * GIB, buckets=((640, 4),))
    assert (card.source, card.budget_bytes) == ("card", 44 * GIB)
    cpu = plan_for(REAL, memory_gib=0, device_type="cpu", card_free_bytes=None, buckets=((640, 4),))
    assert (cpu.name, cpu.source) == ("full", "host")


# --- the real tiny pipeline on CPU ---------------------------------------------------------------


def _budget_keeping(fp: ModelFootprint, blocks: float, bucket=(640, 2)) -> int:
    """A budget whose plan keeps `blocks` transformer blocks resident for `bucket`."""
    usable = MemoryPlan("partial", 0, fp, bucket).denoise_reserve(*bucket) + blocks * fp.transformer_block_bytes
    return int((usable + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1


@pytest.fixture(scope="module")
def full(tiny_model_dir: Path):
    from worker.pipeline import DecomposePipeline

    return DecomposePipeline.load("tiny", device="cpu", cache_dir=tiny_model_dir.parent)


@pytest.fixture(scope="module")
def streamed(tiny_model_dir: Path):
    """The tiny pipeline with one of its two blocks resident, the other streamed, the text encoder
    off the device between prompts and no text layer kept while captioning."""
    import torch
    from diffusers import QwenImageLayeredPipeline

    from worker.pipeline import DecomposePipeline

    pipe = QwenImageLayeredPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    fp = ModelFootprint.from_pipeline(pipe)
    plan = choose_plan(_budget_keeping(fp, 1.5), fp, ((640, 2),), device_type="cpu")
    # The tiny VAE's decode estimate exceeds this budget; untiled, the output must match exactly.
    plan = dataclasses.replace(plan, vae_tiling=False, caption_text_layers=0)
    return DecomposePipeline.place(pipe, torch.device("cpu"), torch.float32, model_id="tiny",
                                   path=str(tiny_model_dir), plan=plan)


def _params(**kw) -> DecomposeParams:
    return DecomposeParams(**{"layers": 2, "num_inference_steps": 2, "prompt": "a red poster", "seed": 5, **kw})


def _pixels(layers) -> np.ndarray:
    return np.stack([np.asarray(layer) for layer in layers])


def test_on_a_cpu_the_worker_plan_is_full_residency(full):
    assert full.placement is None
    assert (full.memory_plan["name"], full.memory_plan["source"], full.memory_plan["device"]) == ("full", "host", "cpu")


def test_a_streamed_job_gives_the_full_jobs_layers(full, streamed):
    from PIL import Image

    assert (streamed.memory_plan["resident_blocks"], streamed.memory_plan["streamed_blocks"]) == (1, 1)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")
    copied = streamed.placement.copier.bytes_copied
    assert np.array_equal(_pixels(streamed.run(image, _params())), _pixels(full.run(image, _params())))
    assert streamed.placement.copier.bytes_copied > copied  # weights really moved
    assert streamed.placement.phase == "decode"
    # Auto-captioned: the caption phase swaps the text encoder in (its layers streamed per token).
    assert np.array_equal(_pixels(streamed.run(image, _params(prompt=""))), _pixels(full.run(image, _params(prompt=""))))


def test_a_job_beyond_the_plan_fails_at_once_with_a_clear_error(streamed):
    from PIL import Image

    from layerq.errors import PipelineFailed

    with pytest.raises(PipelineFailed, match="memory plan cannot run the job: a 1024-bucket job with 10 layers"):
        streamed.run(Image.new("RGBA", (32, 32)), _params(resolution=1024, layers=10))


@pytest.mark.e2e
def test_a_worker_planned_from_layerq_gpu_memory_gib_runs_jobs_and_shows_its_plan(make_stack):
    # 1.15 GiB leaves the tiny model ~100 MB past the margin: less than its 640-bucket decode estimate,
    # so the worker streams (text encoder off the device between prompts, VAE tiled).
    # The tiny model planned on 1.15 GiB; the class table (full-size model) is told its class.
    stack = make_stack(gpu_memory_gib=1.15, memory_class="16", memory_classes="16")
    client = LayerqClient(stack.url, timeout_s=30)
    job = client.submit(sample_png(96, 64), {"num_inference_steps": 2, "prompt": "shapes", "layers": 2, "seed": 1})
    done = client.wait(job["id"], timeout_s=300)
    assert done["status"] == "succeeded", done.get("error")
    assert len(done["result"]["layers"]) == 2
    health = requests.get(stack.url + "/healthz", timeout=10).json()
    plans = [w["memory_plan"] for w in health["live_workers"]]
    assert len(plans) == health["workers"] == 1
    assert plans[0]["source"] == "LAYERQ_GPU_MEMORY_GIB" and plans[0]["budget_gib"] == 1.15
    assert plans[0]["name"] != "full" and plans[0]["vae_tiling"] is True
