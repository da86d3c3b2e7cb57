"""FP8 weights for `quality=fast` jobs (issue 17): the quantisation, the reference linear, the plan's
arithmetic, and a worker that runs fast jobs on FP8 and exact jobs exactly as before.

The pipeline tests run the real tiny diffusers pipeline on a CPU, where FP8 runs as the dequantising
reference (`worker/accel/fp8.py`); the GPU's `torch._scaled_mm` path is measured by
bench/memory_plans_gpu.py (bench/GPU_NOTES.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from layerq.client import LayerqClient
from layerq.params import DecomposeParams
from layerq.sample import sample_png
from worker.memory_plan import GIB, ModelFootprint, choose_plan, plan_for

torch = pytest.importorskip("torch")
from worker.accel import fp8  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The full-size model (bench/results/2026-12-01_h200_issue17_memory_plans.json), with its FP8 figures
# counted from the block's linears: 339.7 M weights of 340 M parameters, one byte each plus a float32
# scale per output row (92 k rows); biases and norms stay bf16.
REAL = ModelFootprint(
    transformer_block_bytes=int(0.633 * GIB), transformer_blocks=60, transformer_rest_bytes=int(0.075 * GIB),
    text_layer_bytes=int(0.434 * GIB), text_layers=28, text_rest_bytes=int(3.29 * GIB), vae_bytes=int(0.236 * GIB),
    transformer_inner_dim=3072, text_hidden_size=3584, vae_base_dim=96, dtype_bytes=2,
    fp8_block_bytes=int(0.318 * GIB), fp8_copy_block_bytes=int(0.317 * GIB),
)


# --- the quantisation and the reference linear ---------------------------------------------------


def test_a_weight_round_trips_within_e4m3s_rounding_bound():
    g = torch.Generator().manual_seed(0)
    # Rows of very different magnitudes: the per-row scale keeps each row's relative error.
    w = torch.randn(96, 256, generator=g) * torch.logspace(-4, 1, 96)[:, None]
    q, scale = fp8.quantize_rows(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (96,)
    err = (fp8.dequantize_rows(q, scale) - w).abs()
    # 3 mantissa bits: half a step is 2^-4 of the value for normal numbers; below e4m3's smallest
    # normal (2^-6 of the scale) the step is fixed at 2^-9 of the scale.
    bound = torch.maximum(w.abs() * 2**-4, scale[:, None] * 2**-10)
    assert bool((err <= bound * (1 + 1e-6)).all())
    assert float(err.max()) > 0  # really rounded
    zero_q, zero_scale = fp8.quantize_rows(torch.zeros(2, 32))
    assert bool((fp8.dequantize_rows(zero_q, zero_scale) == 0).all())


def test_the_reference_linear_is_close_to_the_full_precision_one():
    g = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(512, 384)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(384, 512, generator=g) * 0.02)
    x = torch.randn(2, 40, 512, generator=g)
    torch.set_grad_enabled(False)
    ref = layer(x)
    (converted,) = fp8.convert(torch.nn.Sequential(layer))
    assert converted is layer and isinstance(layer, fp8.Fp8Linear)
    assert torch.equal(layer(x), ref)  # off by default: the bf16 path, bit for bit
    layer.fp8_on = True
    out = layer(x)
    rel = float((out - ref).norm() / ref.norm())
    # Weights and activations each round to ~2^-4 / sqrt(3) relative: ~3.6 % together on random data.
    assert 0.005 < rel < 0.06
    layer.fp8_weight_only = True  # the modulation path: only the weights rounded
    rel_weight_only = float((layer(x) - ref).norm() / ref.norm())
    assert 0.002 < rel_weight_only < rel
    torch.set_grad_enabled(True)


# --- plan arithmetic -------------------------------------------------------------------------------


def test_fast_jobs_keep_more_fp8_blocks_resident_and_the_host_pays_for_the_copy():
    for gib in (46, 22, 14):
        plain = choose_plan(gib * GIB, REAL)
        plan = choose_plan(gib * GIB, REAL, fp8=True)
        # Exact jobs are placed as without FP8.
        assert (plan.name, plan.resident_blocks, plan.caption_text_layers) == (
            plain.name, plain.resident_blocks, plain.caption_text_layers)
        fast = plan.fast_jobs()
        assert fast["weights"].startswith("fp8")
        assert fast["resident_blocks"] >= plan.resident_blocks
        assert fast["resident_blocks"] + fast["streamed_blocks"] == 60
        # The denoising phase of a fast job holds FP8 blocks inside the same budget.
        held = fast["resident_blocks"] * REAL.fp8_block_bytes + plan.denoise_reserve(640, 4, fp8=True)
        assert held <= plan.usable_bytes
        assert fast["resident_blocks"] == 60 or plan.usable_bytes < held + REAL.fp8_block_bytes
        assert plan.pinned_host_bytes == plain.pinned_host_bytes + 60 * REAL.fp8_copy_block_bytes
        assert fast["fp8_copy_on"] == "host (pinned)" and fast["fp8_copy_gib"] == pytest.approx(19.0, abs=0.1)
    assert choose_plan(22 * GIB, REAL, fp8=True).fast_jobs()["resident_blocks"] >= 50  # 26 in bf16
    assert choose_plan(14 * GIB, REAL, fp8=True).fast_jobs()["resident_blocks"] > 2 * choose_plan(14 * GIB, REAL).resident_blocks


def test_a_full_plan_keeps_the_fp8_copy_on_the_gpu_only_where_it_fits():
    big = choose_plan(141 * GIB, REAL, fp8=True)
    assert (big.name, big.fp8, big.pinned_host_bytes) == ("full", True, 0)
    assert big.describe()["fast_jobs"]["fp8_copy_on"] == "gpu"
    card80 = choose_plan(80 * GIB, REAL, fp8=True)
    assert (card80.name, card80.fp8) == ("full", False)
    assert "does not fit on the GPU" in card80.describe()["fast_jobs"]["why"]


def test_the_plan_says_why_fast_jobs_keep_bf16():
    d = choose_plan(22 * GIB, REAL, fp8=False, fp8_why_not="this GPU (sm_86) has no FP8 matrix units (sm_89+)").describe()
    assert d["fp8_fast_quality"] is False and "sm_86" in d["fast_jobs"]["why"]
    unknown = dataclasses.replace(REAL, fp8_block_bytes=0, fp8_copy_block_bytes=0)
    assert choose_plan(22 * GIB, unknown, fp8=True).fp8 is False
    cpu = plan_for(REAL, memory_gib=0, device_type="cpu", card_free_bytes=None, buckets=((640, 4),), fp8=True)
    assert (cpu.name, cpu.describe()["fp8_fast_quality"]) == ("full", True)


def test_layerq_fp8_fast_is_read_as_auto_on_or_off():
    from layerq.config import Settings
    from worker.pipeline import fp8_wanted

    assert Settings.from_env(environ={}).fp8_fast == "auto"
    assert Settings.from_env(environ={"LAYERQ_FP8_FAST": "off"}).fp8_fast == "off"
    cpu = torch.device("cpu")
    assert fp8_wanted("off", cpu) == (False, "off (LAYERQ_FP8_FAST=off)")
    wanted, why = fp8_wanted("auto", cpu)  # a CPU has no FP8 GEMM: auto keeps fast jobs on bf16
    assert not wanted and "no CUDA device" in why
    assert fp8_wanted("on", cpu) == (True, "")  # the dequantising reference (tests)
    with pytest.raises(ValueError, match="LAYERQ_FP8_FAST must be auto, on or off"):
        fp8_wanted("yes", cpu)


# --- the real tiny pipeline on CPU ---------------------------------------------------------------


def _load(tiny_model_dir: Path, fp8_fast: str, budget_blocks: float | None = None):
    from diffusers import QwenImageLayeredPipeline

    from worker.memory_plan import MARGIN_BYTES, MARGIN_FRACTION, MemoryPlan
    from worker.pipeline import DecomposePipeline

    pipe = QwenImageLayeredPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if budget_blocks is None:
        return DecomposePipeline.place(pipe, torch.device("cpu"), torch.float32, model_id="tiny",
                                       path=str(tiny_model_dir), fp8_fast=fp8_fast)
    fp = ModelFootprint.from_pipeline(pipe)
    bucket = (640, 2)
    usable = MemoryPlan("partial", 0, fp, bucket).denoise_reserve(*bucket) + budget_blocks * fp.transformer_block_bytes
    budget = int((usable + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1
    plan = choose_plan(budget, fp, (bucket,), device_type="cpu", fp8=fp8_fast == "on")
    plan = dataclasses.replace(plan, vae_tiling=False, caption_text_layers=0)  # untiled: outputs comparable
    return DecomposePipeline.place(pipe, torch.device("cpu"), torch.float32, model_id="tiny",
                                   path=str(tiny_model_dir), plan=plan)


@pytest.fixture(scope="module")
def plain(tiny_model_dir: Path):
    return _load(tiny_model_dir, "off")


@pytest.fixture(scope="module")
def with_fp8(tiny_model_dir: Path):
    return _load(tiny_model_dir, "on")


@pytest.fixture(scope="module")
def streamed_fp8(tiny_model_dir: Path):
    """One of the tiny model's two blocks resident in bf16; a fast job's FP8 blocks are smaller."""
    return _load(tiny_model_dir, "on", budget_blocks=1.5)


def _params(**kw) -> DecomposeParams:
    return DecomposeParams(**{"layers": 2, "num_inference_steps": 4, "prompt": "a red poster", "seed": 5, **kw})


def _image():
    from PIL import Image

    return Image.fromarray(np.random.default_rng(3).integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")


def _pixels(layers) -> np.ndarray:
    return np.stack([np.asarray(layer) for layer in layers]).astype(np.int16)


def test_exact_jobs_are_unchanged_and_fast_jobs_run_fp8_on_a_worker_with_fp8(plain, with_fp8):
    assert plain.fp8_modules == [] and plain.memory_plan["fast_jobs"]["why"] == "off (LAYERQ_FP8_FAST=off)"
    assert with_fp8.memory_plan["fp8_fast_quality"] is True and with_fp8.fp8_modules
    calls = []
    original = fp8.fp8_linear

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    fp8.fp8_linear = counting
    try:
        exact = _pixels(with_fp8.run(_image(), _params()))
        assert calls == []  # no FP8 call in an exact job
        fast = _pixels(with_fp8.run(_image(), _params(quality="fast")))
        assert calls  # the fast job ran the FP8 linears
        calls.clear()
        exact_after = _pixels(with_fp8.run(_image(), _params()))
        assert calls == [] and not any(m.fp8_on for m in with_fp8.fp8_modules)
    finally:
        fp8.fp8_linear = original
    assert np.array_equal(exact, _pixels(plain.run(_image(), _params())))
    assert np.array_equal(exact_after, exact)  # a fast job in between leaves nothing behind
    fast_bf16 = _pixels(plain.run(_image(), _params(quality="fast")))
    assert not np.array_equal(fast, fast_bf16)  # FP8 really changed the computation ...
    assert np.abs(fast - fast_bf16).mean() < 8  # ... by rounding, not by breaking it (0-255 pixels)


def test_a_streamed_worker_places_fp8_blocks_for_fast_jobs_and_bf16_for_exact_ones(with_fp8, streamed_fp8):
    placement = streamed_fp8.placement
    plan = streamed_fp8.memory_plan
    assert plan["resident_blocks"] == 1 and plan["fast_jobs"]["resident_blocks"] == 2
    copied = placement.copier.bytes_copied
    fast = streamed_fp8.run(_image(), _params(quality="fast"))
    assert placement.transformer_stack.mode == "fp8"
    # The same FP8 arithmetic as the fully resident worker (copies are exact).
    assert np.array_equal(_pixels(fast), _pixels(with_fp8.run(_image(), _params(quality="fast"))))
    fast_copied = placement.copier.bytes_copied - copied
    copied = placement.copier.bytes_copied
    exact = streamed_fp8.run(_image(), _params())
    assert placement.transformer_stack.mode == "bf16"
    assert np.array_equal(_pixels(exact), _pixels(with_fp8.run(_image(), _params())))
    exact_copied = placement.copier.bytes_copied - copied
    assert 0 < fast_copied < exact_copied  # FP8 blocks stay resident; the bf16 one streams every call


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="Inductor on CPU needs a C++ compiler")
def test_compiled_blocks_keep_the_exact_graph_bitwise_after_the_fp8_copy(tiny_model_dir: Path):
    """The regional compile of a converted transformer runs the same exact computation as before FP8
    (on the GPU a recompile may still tune kernels differently: bench/GPU_NOTES.md, memory run 4)."""
    from diffusers import QwenImageLayeredPipeline

    from worker.accel.transformer import compile_blocks, repeated_blocks

    pipe = QwenImageLayeredPipeline.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)

    def run():
        with torch.inference_mode():
            out = pipe(image=_image(), prompt="a red poster", negative_prompt=" ", true_cfg_scale=4.0, layers=2,
                       num_inference_steps=2, resolution=640, generator=torch.Generator().manual_seed(5),
                       output_type="np")
        return torch.from_numpy(np.asarray(out.images[0]).copy())

    try:
        compile_blocks(pipe.transformer)
        before = run()
        torch._dynamo.reset()
        modules = [m for block in repeated_blocks(pipe.transformer) for m in fp8.convert(block)]
        compile_blocks(pipe.transformer)
        assert torch.equal(run(), before)
        for m in modules:
            m.fp8_on = True
        assert not torch.equal(run(), before)  # the FP8 graph is another computation
        for m in modules:
            m.fp8_on = False
        assert torch.equal(run(), before)
    finally:
        torch._dynamo.reset()


def test_the_first_exact_job_after_the_fp8_warm_up_reuses_the_first_compiled_graph(tiny_model_dir: Path):
    """The worker's order: FP8 copy at placement, blocks compiled, the exact (bf16) warm-up, the FP8
    warm-up (`weights_for(True)`), then jobs. The first exact job must find the bf16 graph compiled
    first. It did not while `fp8_on` was a class default until the first flip: the warm-up's graph
    guarded on the module's `__dict__` lacking it, and the first exact job compiled a third graph
    (H200: 23.4 s, not 14.4 s). Dynamo's guards are what is checked, so "eager" stands in for Inductor."""
    from torch._dynamo.utils import counters

    from worker.accel.transformer import repeated_blocks

    worker = _load(tiny_model_dir, "on")
    assert worker.fp8_modules
    torch._dynamo.reset()
    counters.clear()
    try:
        for block in repeated_blocks(worker.pipe.transformer):
            block.compile(backend="eager", dynamic=True)
        worker._accelerate(fast_captions=False, warmup_buckets=((640, 2),))
        warmed = counters["stats"]["unique_graphs"]
        assert warmed >= 2  # the bf16 graph and the FP8 one
        for quality in ("exact", "fast", "exact"):
            worker.run(_image(), _params(quality=quality))
            assert counters["stats"]["unique_graphs"] == warmed, f"a {quality} job compiled another graph"
    finally:
        torch._dynamo.reset()


@pytest.mark.e2e
def test_a_worker_with_fp8_runs_a_fast_and_an_exact_job_and_shows_it_in_healthz(make_stack):
    # The tiny model on 1.15 GiB streams (see test_memory_plan.py); LAYERQ_FP8_FAST=on runs the
    # dequantising reference on this CPU.
    stack = make_stack(gpu_memory_gib=1.15, memory_class="16", memory_classes="16", fp8_fast="on")
    client = LayerqClient(stack.url, timeout_s=30)
    params = {"num_inference_steps": 4, "prompt": "shapes", "layers": 2, "seed": 1}
    fast = client.submit(sample_png(96, 64), {**params, "quality": "fast"})
    exact = client.submit(sample_png(96, 64), params)
    done = {name: client.wait(job["id"], timeout_s=300) for name, job in (("fast", fast), ("exact", exact))}
    for name, job in done.items():
        assert job["status"] == "succeeded", (name, job.get("error"))
        assert len(job["result"]["layers"]) == 2
    health = requests.get(stack.url + "/healthz", timeout=10).json()
    (plan,) = [w["memory_plan"] for w in health["live_workers"]]
    assert plan["name"] != "full" and plan["fp8_fast_quality"] is True
    assert plan["fast_jobs"]["weights"].startswith("fp8") and plan["fast_jobs"]["fp8_copy_on"] == "host (pinned)"
    assert plan["pinned_host_gib"] >= plan["fast_jobs"]["fp8_copy_gib"]
