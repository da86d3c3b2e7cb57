"""The edit step: change one RGBA layer from an instruction with `QwenImageEditPlusPipeline`.

The authors' recipe (src/tool/edit_rgba_image.py in QwenLM/Qwen-Image-Layered): composite the layer over
a flat green backdrop, edit the RGB image, recover alpha with a matte. `edit_layer` is the plain
function a worker task calls; it knows nothing about jobs, queues or storage.
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any

from PIL import Image

from layerq.errors import PipelineFailed, ValidationFailed
from worker.matte import DEFAULT_MATTE, Matte, get_matte, on_backdrop
from worker.stepping import OnStep, ShouldStop, StopAtStep, raise_stopped, step_callback

log = logging.getLogger(__name__)

EDIT_MODEL_DEFAULT = "Qwen/Qwen-Image-Edit-2509"
MAX_PROMPT_CHARS = 2000
_MAX_ERROR_CHARS = 500


def resolve_edit_model(model: str, cache_dir: Path) -> str:
    """What to hand `from_pretrained`: the tiny edit model's directory, a local directory, or a hub id."""
    if model == "tiny":
        from worker.models.build import ensure_cached

        return str(ensure_cached(Path(cache_dir), "edit", "tiny"))
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"model directory not found: {model}")
    return model


def load_edit_pipeline(
    model: str = EDIT_MODEL_DEFAULT, device: str = "auto", cache_dir: Path = Path(".layerq/models"),
    speedups: bool = True,
) -> Any:
    """Load `QwenImageEditPlusPipeline` from a hub id, a local dir or `tiny`, onto `device`.

    With `speedups` on a CUDA device, the decomposition path's lossless transformer switches are
    applied to it in place and it is warmed up at the edit shapes (worker.accel.editor), so the first
    job runs at steady speed; on a CPU nothing changes."""
    from diffusers import QwenImageEditPlusPipeline

    from worker.pipeline import resolve_device

    dev, dtype = resolve_device(device)
    pipe = QwenImageEditPlusPipeline.from_pretrained(resolve_edit_model(model, cache_dir), dtype=dtype)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    if speedups and dev.type == "cuda":
        from worker.accel.editor import prepare_edit

        started = time.monotonic()
        editor = prepare_edit(pipe)
        log.info("edit speed-ups on (%s, attention %s); warm-up %.1f s of %.1f s", editor.options.describe(),
                 editor.attention_backend, sum(editor.warmup_s.values()), time.monotonic() - started)
    return pipe


def edit_layer(
    pipe: Any,
    layer: Image.Image,
    instruction: str,
    *,
    negative_prompt: str = " ",
    true_cfg_scale: float = 4.0,
    num_inference_steps: int = 50,
    seed: int = 0,
    matte: Matte | str = DEFAULT_MATTE,
    on_step: OnStep | None = None,
    should_stop: ShouldStop | None = None,
) -> Image.Image:
    """Edit one RGBA layer; return the edited RGBA layer at the source layer's size.

    `on_step(step, total)` runs after every denoising step; `should_stop()` returning a reason
    (`"canceled"` or `"time_limit"`) ends the call at that step with `JobCanceled` / `JobTimedOut`.
    Anything the pipeline raises becomes `PipelineFailed`. Defaults are the authors' (50 steps, true
    CFG 4.0, negative prompt " " — a negative prompt is what turns CFG on).
    """
    import torch

    if not instruction or not instruction.strip():
        raise ValidationFailed("prompt is required: the edit instruction", field="prompt")
    if len(instruction) > MAX_PROMPT_CHARS:
        raise ValidationFailed(f"prompt is longer than {MAX_PROMPT_CHARS} characters", field="prompt")
    if num_inference_steps < 2:
        # Same scheduler as decomposition: one step stretches sigmas by 0/0 and the image comes out blank.
        raise ValidationFailed("num_inference_steps must be at least 2 with this model's scheduler",
                               field="num_inference_steps")
    try:
        # A name picks `keep` or `chroma`; a configured `model` matte is built once by the worker and
        # passed in as an object (it holds a loaded segmentation model).
        matte_fn = get_matte(matte) if isinstance(matte, str) else matte
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="matte") from None
    source = layer.convert("RGBA")

    device = pipe._execution_device
    started = time.monotonic()
    try:
        with torch.inference_mode():
            output = pipe(
                image=[on_backdrop(source)],
                prompt=instruction,
                negative_prompt=negative_prompt,
                true_cfg_scale=true_cfg_scale,
                num_inference_steps=num_inference_steps,
                generator=torch.Generator(device=device).manual_seed(seed),
                num_images_per_prompt=1,
                output_type="pil",
                callback_on_step_end=step_callback(on_step, should_stop),
            )
    except StopAtStep as stop:
        _release(stop, device)
        raise_stopped(stop)
    except Exception as exc:
        log.error("edit pipeline failed after %.1f s", time.monotonic() - started, exc_info=exc)
        _release(exc, device)
        raise PipelineFailed(f"{type(exc).__name__}: {exc}".strip()[:_MAX_ERROR_CHARS]) from exc
    # The pipeline works at ~1024² by area, keeping the aspect ratio only to multiples of 32.
    edited = output.images[0].convert("RGB").resize(source.size, Image.Resampling.LANCZOS)
    log.info("edited a %dx%d layer in %.1f s", *source.size, time.monotonic() - started)
    return matte_fn(edited, source)


def _release(exc: BaseException, device: Any) -> None:
    """Drop the pipeline frames an exception keeps alive (latents, activations), then free CUDA blocks."""
    traceback.clear_frames(exc.__traceback__)
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.empty_cache()
