"""The edit step against the real QwenImageEditPlusPipeline with the tiny edit model (CPU, few steps)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")

from layerq.errors import JobCanceled, JobTimedOut, ValidationFailed  # noqa: E402
from worker.edit import edit_layer, load_edit_pipeline, resolve_edit_model  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    cache = Path(os.environ.get("LAYERQ_TEST_MODEL_CACHE") or tmp_path_factory.mktemp("models"))
    return load_edit_pipeline("tiny", device="cpu", cache_dir=cache)


def layer(width: int = 150, height: int = 100) -> Image.Image:
    """A transparent layer with an opaque red block and a half-transparent blue one."""
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[20:60, 30:90] = (200, 40, 40, 255)
    rgba[50:90, 80:140] = (40, 60, 210, 128)
    return Image.fromarray(rgba, "RGBA")


def test_edit_layer_returns_an_rgba_layer_of_the_source_size(pipe) -> None:
    from diffusers import QwenImageEditPlusPipeline

    assert isinstance(pipe, QwenImageEditPlusPipeline)
    steps: list[tuple[int, int]] = []
    source = layer()
    out = edit_layer(pipe, source, "make the red block blue", num_inference_steps=2, seed=7,
                     on_step=lambda i, n: steps.append((i, n)))
    assert out.mode == "RGBA" and out.size == source.size
    assert steps == [(1, 2), (2, 2)]
    again = edit_layer(pipe, source, "make the red block blue", num_inference_steps=2, seed=7, matte="keep")
    # `keep` gives back the source alpha exactly.
    assert np.array_equal(np.asarray(again)[..., 3], np.asarray(source)[..., 3])


@pytest.mark.parametrize(("reason", "error"), [("canceled", JobCanceled), ("time_limit", JobTimedOut)])
def test_a_stop_request_ends_the_edit_at_the_next_step(pipe, reason: str, error: type[Exception]) -> None:
    steps: list[int] = []
    with pytest.raises(error):
        edit_layer(pipe, layer(), "recolour", num_inference_steps=20, seed=1,
                   on_step=lambda i, n: steps.append(i), should_stop=lambda: reason if steps else None)
    assert steps == [1]  # stopped after the first step, not after all 20
    assert pipe._interrupt is True


def test_an_error_in_the_progress_callback_propagates_as_is(pipe) -> None:
    class StoreDown(RuntimeError):
        pass

    def on_step(i: int, n: int) -> None:
        raise StoreDown("progress store unavailable")

    with pytest.raises(StoreDown):
        edit_layer(pipe, layer(), "recolour", num_inference_steps=3, on_step=on_step)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"instruction": "  "}, "prompt"), ({"instruction": "x" * 2001}, "prompt"),
     ({"num_inference_steps": 1}, "num_inference_steps"), ({"matte": "rmbg"}, "matte"),
     ({"matte": "model"}, "matte")],
)
def test_bad_parameters_are_refused_before_the_model_runs(pipe, kwargs: dict, field: str) -> None:
    args = {"instruction": "recolour", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValidationFailed) as exc:
        edit_layer(pipe, layer(), args.pop("instruction"), **args, on_step=lambda i, n: pytest.fail("ran"))
    assert exc.value.field == field


def test_model_names_resolve_like_the_decompose_model(tmp_path: Path) -> None:
    assert resolve_edit_model("Qwen/Qwen-Image-Edit-2509", tmp_path) == "Qwen/Qwen-Image-Edit-2509"
    assert resolve_edit_model(str(tmp_path), tmp_path) == str(tmp_path.resolve())
    with pytest.raises(FileNotFoundError):
        resolve_edit_model("./no/such/dir", tmp_path)
