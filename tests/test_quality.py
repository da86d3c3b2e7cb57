"""The `quality` job parameter: exact by default; balanced and fast skip work in the worker's call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from api.errors import validation_failed
from layerq.params import DecomposeParams
from worker.accel.quality import MODES, mode


def test_quality_defaults_to_exact_and_names_the_field_when_wrong():
    assert DecomposeParams().quality == "exact"
    assert DecomposeParams(quality="fast").quality == "fast"
    with pytest.raises(ValidationError) as info:
        DecomposeParams.model_validate({"quality": "turbo"})
    err = validation_failed(info.value, prefix="params")
    assert err.field == "params.quality"


def test_estimates_are_kept_per_quality(redis_url):
    """ETAs and dry runs of a `fast` job use `fast` jobs' times, not a median mixed with `exact` ones;
    a quality never measured falls back to the nearest measured bucket of another."""
    import uuid

    from storage.client import connect
    from storage.stats import ServiceTimes, bucket

    stats = ServiceTimes(connect(redis_url), f"q{uuid.uuid4().hex[:8]}")
    exact = DecomposeParams(layers=4, num_inference_steps=50, prompt="p").model_dump()
    fast, balanced = {**exact, "quality": "fast"}, {**exact, "quality": "balanced"}
    assert bucket(exact) == "640x4" and bucket(fast) == "640x4-fast"
    for _ in range(3):
        stats.record(exact, {"denoising": 50.0, "total": 52.0})
        stats.record(fast, {"denoising": 20.0, "total": 22.0})
    assert stats.estimate_s(exact) == pytest.approx(52.0)
    assert stats.estimate_s(fast) == pytest.approx(22.0)
    assert stats.estimate_s({**fast, "layers": 8}) > stats.estimate_s(fast)  # scaled within its quality
    assert stats.estimate_s(balanced) == pytest.approx(52.0)  # never measured: the exact bucket, same size


def test_modes_schedule():
    assert not mode("exact").lossy and mode("exact").step_cache() is None
    assert mode("exact").steps(50) == 50 and mode("balanced").steps(50) == 50
    assert mode("fast").steps(50) == 30 and mode("fast").steps(2) == 2
    assert mode("balanced").step_cache().interval == 2
    assert set(MODES) == {"exact", "balanced", "fast"}
    with pytest.raises(ValueError):
        mode("turbo")


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir: Path):
    pytest.importorskip("torch")
    from worker.pipeline import DecomposePipeline

    return DecomposePipeline.load("tiny", device="cpu", cache_dir=tiny_model_dir.parent)


@pytest.mark.parametrize("quality,steps,computed", [("exact", 10, 20), ("balanced", 10, 14), ("fast", 10, 8)])
def test_worker_call_runs_fewer_transformer_calls(pipeline, quality, steps, computed):
    # CFG on: two transformer calls per step. balanced at 10 steps reuses steps 3, 5, 7 (window 2..7);
    # fast runs 6 steps and reuses steps 2 and 4 (window 1..4).
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 4), dtype=np.uint8), "RGBA")
    transformer = pipeline.pipe.transformer
    calls = []
    transformer.forward = lambda *a, **k: calls.append(1) or type(transformer).forward(transformer, *a, **k)
    progress = []
    try:
        layers = pipeline.run(
            image,
            DecomposeParams(layers=2, num_inference_steps=steps, prompt="a poster", seed=7, quality=quality),
            on_step=lambda done, total: progress.append((done, total)),
        )
    finally:
        del transformer.forward
    assert len(layers) == 2
    assert progress[-1] == (mode(quality).steps(steps),) * 2
    assert len(calls) == computed
