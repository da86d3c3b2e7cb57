"""The worker's pipeline wrapper against the real QwenImageLayeredPipeline with the tiny model.

No mocks: the tiny model is built from the real diffusers/transformers classes, saved, and loaded back
through `from_pretrained`; every run below is a real denoising loop on CPU (few steps, to stay fast).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layerq.errors import JobCanceled, JobTimedOut, PipelineFailed, ValidationFailed
from layerq.params import DecomposeParams
from worker.pipeline import DecomposePipeline, output_size, resolve_model
from worker.tiny_model import TINY_MODEL_VERSION, build_tiny_model, ensure_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from tests


@pytest.fixture(scope="session")
def pipeline(tiny_model_dir: Path) -> DecomposePipeline:
    # `tiny` resolves to the directory the session fixture already built (no second build).
    return DecomposePipeline.load("tiny", device="auto", cache_dir=tiny_model_dir.parent)


def poster(width: int, height: int, seed: int = 0) -> Image.Image:
    """A small RGBA test image: random colours with a transparent band (the pipeline resizes it)."""
    rgba = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[: height // 4, :, 3] = 0
    return Image.fromarray(rgba, "RGBA")


def params(**kw: object) -> DecomposeParams:
    base: dict[str, object] = {"layers": 2, "num_inference_steps": 2, "prompt": "a red poster", "seed": 777}
    return DecomposeParams(**{**base, **kw})


def pixels(layers: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(layer) for layer in layers])


def test_tiny_model_is_small_and_loads_through_from_pretrained(
    tiny_model_dir: Path, pipeline: DecomposePipeline
) -> None:
    from diffusers import QwenImageLayeredPipeline

    assert tiny_model_dir.name == f"tiny-{TINY_MODEL_VERSION}"
    assert (tiny_model_dir / "model_index.json").is_file()
    size = sum(f.stat().st_size for f in tiny_model_dir.rglob("*") if f.is_file())
    assert size < 20 * 2**20
    assert isinstance(pipeline.pipe, QwenImageLayeredPipeline)
    assert pipeline.model_id == "tiny" and pipeline.path == str(tiny_model_dir.resolve())
    assert (str(pipeline.device), str(pipeline.dtype)) == ("cpu", "torch.float32")
    assert pipeline.pipe.vae.config.z_dim != 4 and pipeline.pipe.vae.config.input_channels == 4


def test_build_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    built = build_tiny_model(tmp_path / "again")
    for f in tiny_model_dir.rglob("*.safetensors"):
        assert (built / f.relative_to(tiny_model_dir)).read_bytes() == f.read_bytes(), f


def test_ensure_tiny_model_survives_a_race(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(ensure_tiny_model(tmp_path))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / f"tiny-{TINY_MODEL_VERSION}"] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"tiny-{TINY_MODEL_VERSION}"]  # no temp dirs left


def test_resolve_model(tmp_path: Path) -> None:
    assert resolve_model(str(tmp_path), tmp_path) == str(tmp_path.resolve())
    assert resolve_model("Qwen/Qwen-Image-Layered", tmp_path) == "Qwen/Qwen-Image-Layered"
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing"), tmp_path)


def test_output_size() -> None:
    assert output_size(640, 480, 640) == (736, 544)
    assert output_size(100, 100, 640) == (640, 640)
    assert output_size(2000, 2000, 1024) == (1024, 1024)
    assert output_size(1080, 1920, 1024) == (768, 1376)
    assert output_size(2000, 1, 640)[1] == 0  # beyond ~1600:1 a side rounds to 0


def test_output_size_matches_the_pipelines_own_arithmetic() -> None:
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_layered import calculate_dimensions

    rng = np.random.default_rng(0)
    for w, h in rng.integers(1, 8193, (2000, 2)).tolist():
        for resolution in (640, 1024):
            cw, ch = calculate_dimensions(resolution * resolution, w / h)
            for multiple in (16, 32):  # 2 × vae_scale_factor: real VAE, tiny VAE
                assert output_size(w, h, resolution) == (cw // multiple * multiple, ch // multiple * multiple)


@pytest.mark.parametrize(
    ("size", "layers"), [((640, 480), 2), ((300, 600), 3), ((1000, 250), 2)], ids=["4:3", "1:2", "4:1"]
)
def test_run_returns_rgba_layers_of_the_predicted_size(
    pipeline: DecomposePipeline, size: tuple[int, int], layers: int
) -> None:
    steps: list[tuple[int, int]] = []
    out = pipeline.run(poster(*size), params(layers=layers), on_step=lambda i, n: steps.append((i, n)))
    assert len(out) == layers
    assert {(layer.mode, layer.size) for layer in out} == {("RGBA", output_size(*size, 640))}
    assert steps == [(1, 2), (2, 2)]  # progress reaches the total
    assert max(np.asarray(layer).max() for layer in out) > 0  # not blank (NaN latents decode to zeros)


def test_same_seed_same_layers_other_seed_other_layers(pipeline: DecomposePipeline) -> None:
    image = poster(256, 256)
    first = pixels(pipeline.run(image, params()))
    again = pixels(pipeline.run(image, params()))
    other = pixels(pipeline.run(image, params(seed=778)))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(("reason", "error"), [("canceled", JobCanceled), ("time_limit", JobTimedOut)])
def test_should_stop_interrupts(pipeline: DecomposePipeline, reason: str, error: type[Exception]) -> None:
    seen: list[int] = []
    with pytest.raises(error):
        pipeline.run(
            poster(128, 128),
            params(num_inference_steps=5),
            on_step=lambda i, n: seen.append(i),
            should_stop=lambda: reason if len(seen) >= 2 else None,
        )
    assert seen == [1, 2]  # the loop stopped right after the step that saw the request


def test_a_failing_callback_is_not_a_pipeline_failure(pipeline: DecomposePipeline) -> None:
    def on_step(i: int, n: int) -> None:
        raise ConnectionError("progress store unreachable")

    with pytest.raises(ConnectionError, match="progress store"):
        pipeline.run(poster(64, 64), params(), on_step=on_step)


def test_pipeline_error_surfaces_as_pipeline_failed(pipeline: DecomposePipeline) -> None:
    # A 2000:1 strip makes the pipeline's own size computation round the height to 0, and it raises.
    with pytest.raises(PipelineFailed, match="height and width must be > 0") as info:
        pipeline.run(poster(2000, 1), params())
    assert info.value.code == "pipeline_error" and isinstance(info.value.__cause__, ValueError)


def test_one_step_is_refused(pipeline: DecomposePipeline) -> None:
    # shift_terminal turns a one-step schedule into NaN sigmas: blank layers, so refuse it up front.
    with pytest.raises(ValidationFailed) as info:
        one_step = DecomposeParams.model_construct(**{**params().model_dump(), "num_inference_steps": 1})
        pipeline.run(poster(64, 64), one_step)
    assert info.value.field == "num_inference_steps"


def test_empty_prompt_captions_the_image_itself(pipeline: DecomposePipeline) -> None:
    out = pipeline.run(poster(320, 240), params(prompt="", use_en_prompt=False))
    assert [layer.size for layer in out] == [output_size(320, 240, 640)] * 2


def test_seed_is_required(pipeline: DecomposePipeline) -> None:
    with pytest.raises(ValueError, match="seed"):
        pipeline.run(poster(64, 64), DecomposeParams(layers=2))
