"""The Qwen-Image-Layered pipeline as a GPU worker uses it: loaded once per process, called per job.

`DecomposePipeline.run` makes exactly the authors' official call (see docs in DESIGN.md) and turns
what can go wrong into layerq's errors: a cancellation or a passed deadline seen by the step callback
becomes `JobCanceled` / `JobTimedOut`, anything the pipeline itself raises becomes `PipelineFailed`.

torch and diffusers are imported lazily (inside functions), so importing this module — e.g. to use
`output_size` in a process that must stay small — costs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerq.errors import PipelineFailed, ValidationFailed
from layerq.params import DecomposeParams
from worker.accel.quality import mode as quality_mode
from worker.stepping import OnStep, ShouldStop, StopAtStep, raise_stopped, step_callback

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

# calculate_dimensions in diffusers' qwenimage pipelines rounds both sides to this multiple.
_SIDE_MULTIPLE = 32
_MAX_ERROR_CHARS = 1000


def output_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) of every layer the pipeline returns for an input of this size.

    Mirrors `QwenImageLayeredPipeline.__call__`: the output keeps the input's aspect ratio at an area of
    `resolution²`, each side rounded (Python's round, half to even) to a multiple of 32; the input's own
    size matters only through its ratio. The pipeline then floors to `2 × vae_scale_factor` (16 for the
    real VAE, 32 for the tiny one), a no-op on multiples of 32. A side of 0 (aspect ratio beyond about
    1600:1) makes the pipeline raise.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    ratio = width / height
    w = math.sqrt(resolution * resolution * ratio)
    h = w / ratio
    return round(w / _SIDE_MULTIPLE) * _SIDE_MULTIPLE, round(h / _SIDE_MULTIPLE) * _SIDE_MULTIPLE


def resolve_model(model: str, cache_dir: Path) -> str:
    """What to hand `from_pretrained`: the tiny model's directory, a local directory, or a hub id."""
    if model == "tiny":
        from worker.tiny_model import ensure_tiny_model

        return str(ensure_tiny_model(Path(cache_dir)))
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if model.startswith(("/", ".", "~")):
        # Clearly meant as a path; without this, from_pretrained reports a confusing hub-id error.
        raise FileNotFoundError(f"model directory not found: {model}")
    return model  # a hub id such as Qwen/Qwen-Image-Layered


def resolve_device(device: str) -> tuple[torch.device, torch.dtype]:
    """`auto` → CUDA + bfloat16 when a GPU is visible, else CPU + float32 (bf16 is slow on CPUs)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but no CUDA device is visible")
    return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)


def _caption_without_cudnn_attention(pipe: Any) -> None:
    """The authors' auto-caption (the path without speed-ups) decodes without cuDNN attention too:
    see worker.accel.captioner.no_cudnn_sdpa. The fast path applies it inside its own captioner."""
    from worker.accel.captioner import no_cudnn_sdpa

    caption = pipe.get_image_caption

    def get_image_caption(*args: Any, **kwargs: Any) -> str:
        with no_cudnn_sdpa():
            return caption(*args, **kwargs)

    pipe.get_image_caption = get_image_caption  # the pipeline calls it through self


def caption_flavour(model_id: str, how: str, device_type: str, dtype: str) -> str:
    """`DecomposePipeline.caption_flavour`: `how` is `reference` (the authors' call), or what the fast
    captioner does differently: `static` (static-cache, compiled decoding), `invariant` (fixed
    per-image shapes, batched), or `static+invariant`."""
    return f"{model_id}|{how}|{device_type}|{dtype}"


def _hand_over_caption(stack: contextlib.ExitStack, pipe: Any, runner: Any, caption: str) -> None:
    """For one call: where the pipeline (or the fast runner, which captions before calling it) would
    write the caption, hand it `caption` instead."""
    from worker.accel.decomposer import patched

    stack.enter_context(patched(pipe, "get_image_caption", lambda *_a, **_k: caption))
    if runner is not None:
        stack.enter_context(patched(runner, "caption", lambda *_a, **_k: caption))
def fp8_wanted(setting: str, dev: torch.device) -> tuple[bool, str]:
    """(FP8 weights for fast jobs, why not) from LAYERQ_FP8_FAST: `auto` where the GPU runs row-wise
    FP8 GEMMs, `on` (the dequantising reference on a CPU; a GPU that cannot run them refuses to
    start), `off`."""
    from worker.accel.fp8 import scaled_mm_available

    if setting not in ("auto", "on", "off"):
        raise ValueError(f"LAYERQ_FP8_FAST must be auto, on or off, got {setting!r}")
    if setting == "off":
        return False, "off (LAYERQ_FP8_FAST=off)"
    why_not = scaled_mm_available(dev)
    if setting == "on" and why_not and dev.type == "cuda":
        raise RuntimeError(f"LAYERQ_FP8_FAST=on, but {why_not}")
    if setting == "on" or why_not is None:
        return True, ""
    return False, why_not


def _card_free_bytes(dev: torch.device) -> int | None:
    if dev.type != "cuda":
        return None
    import torch

    return int(torch.cuda.mem_get_info(dev)[0])


@dataclass
class DecomposePipeline:
    """A loaded `QwenImageLayeredPipeline` plus the device and dtype it runs in."""

    pipe: Any  # diffusers.QwenImageLayeredPipeline (typed loosely: diffusers is imported lazily)
    device: torch.device
    dtype: torch.dtype
    model_id: str
    path: str
    load_s: float = field(default=0.0)
    runner: Any = None  # worker.acceleration.FastDecomposer on CUDA (same call, same output), else None
    warmup_s: float = field(default=0.0)
    cfg: Any = None  # worker.accel.cfg_parallel.CfgParallel on rank 0 of a CFG-parallel pair, else None
    placement: Any = None
    """worker.block_streaming.PlacedPipeline when the memory plan is not `full`, else None."""
    memory_plan: dict[str, Any] = field(default_factory=dict)
    """The plan's `describe()`: published with the worker's heartbeat (/healthz)."""
    fp8_modules: list[Any] = field(default_factory=list)
    """The transformer's linears holding an FP8 copy (worker/accel/fp8.py): fast jobs use it; empty
    when the plan has no FP8."""

    @classmethod
    def load(
        cls, model: str, *, device: str = "auto", cache_dir: Path | str = ".layerq/models",
        speedups: bool = True, fast_captions: bool = False, warmup_buckets: tuple[tuple[int, int], ...] = (),
        memory_gib: float = 0.0, fp8_fast: str = "off",
    ) -> DecomposePipeline:
        """Load once per worker process (tens of seconds and ~54 GB for the real model).

        The memory plan (worker/memory_plan.py) is chosen here from the card's free memory, or from
        `memory_gib` (LAYERQ_GPU_MEMORY_GIB) when > 0, for the warm-up buckets: `full` moves the whole
        pipeline to the device as before; any other plan keeps the big weights in pinned host memory and
        streams them (worker/block_streaming.py). On a CPU without `memory_gib` the plan is `full`.
        `fp8_fast` (LAYERQ_FP8_FAST: auto, on, off) adds FP8 weights for fast jobs (`fp8_wanted`).

        `classic` loads the no-GPU baseline instead (worker.layersets.classic), which has the same
        `run` and needs nothing loaded."""
        if model == "classic":
            from worker.layersets.classic import ClassicDecomposer

            return ClassicDecomposer.load(model)  # type: ignore[return-value]  # same duck type: run()
        from diffusers import QwenImageLayeredPipeline

        dev, dtype = resolve_device(device)
        path = resolve_model(model, Path(cache_dir))
        started = time.monotonic()
        # Measured before any weight lands on the card: what this worker may use.
        card_free = _card_free_bytes(dev)
        # `dtype` (not the deprecated `torch_dtype`) is what diffusers 0.42 and transformers 5 read.
        pipe = QwenImageLayeredPipeline.from_pretrained(path, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)  # progress goes through on_step, not tqdm on stderr
        loaded = cls.place(pipe, dev, dtype, model_id=model, path=path, memory_gib=memory_gib,
                           card_free_bytes=card_free, buckets=warmup_buckets, fp8_fast=fp8_fast)
        loaded.load_s = time.monotonic() - started
        log.info("loaded %s from %s on %s (%s) in %.1f s", model, path, dev, dtype, loaded.load_s)
        if loaded.placement is not None and fast_captions:
            # Batch-invariant captions only (`_accelerate`): their decode runs in the placement's caption
            # phase, eagerly through the streamed layers (a CUDA graph would keep weight addresses that
            # move), 8 captions sharing each token's layer copies.
            log.info("fast captions under memory plan %s: batch-invariant, eager decode, batches of 8",
                     loaded.memory_plan["name"])
        if speedups and dev.type == "cuda":
            loaded._accelerate(fast_captions, warmup_buckets)
        return loaded

    @classmethod
    def place(
        cls, pipe: Any, dev: torch.device, dtype: torch.dtype, *, model_id: str, path: str, memory_gib: float = 0.0,
        card_free_bytes: int | None = None, buckets: tuple[tuple[int, int], ...] = (), plan: Any = None,
        fp8_fast: str = "off",
    ) -> DecomposePipeline:
        """Choose the memory plan for a loaded pipeline (on the host or already on `dev`) and apply it;
        `plan` (a `MemoryPlan`) applies that one instead of choosing. Where the plan has FP8 for fast
        jobs, the FP8 copy is made here, once."""
        from worker.memory_plan import ModelFootprint, plan_for

        if plan is None:
            wanted, why_not = fp8_wanted(fp8_fast, dev)
            plan = plan_for(ModelFootprint.from_pipeline(pipe), memory_gib=memory_gib, device_type=dev.type,
                            card_free_bytes=card_free_bytes, buckets=tuple(buckets) or ((640, 4),),
                            fp8=wanted, fp8_why_not=why_not)
        placement = None
        modules: list[Any] = []
        if plan.full:
            pipe.to(dev)
            if plan.fp8:
                from worker.accel import fp8
                from worker.block_streaming import transformer_blocks

                modules = [m for block in transformer_blocks(pipe.transformer) for m in fp8.convert(block)]
        else:
            from worker.block_streaming import PlacedPipeline

            placement = PlacedPipeline(pipe, plan, dev)
            if plan.fp8:
                modules = placement.enable_fp8()
        if dev.type == "cuda":
            _caption_without_cudnn_attention(pipe)
        log.info("memory plan: %s", plan.describe())
        return cls(pipe=pipe, device=dev, dtype=dtype, model_id=model_id, path=path, placement=placement,
                   memory_plan=plan.describe(), fp8_modules=modules)

    @contextlib.contextmanager
    def weights_for(self, fp8: bool) -> Any:
        """The transformer runs the calls inside with its FP8 copy when `fp8` (a fast job on a worker
        with FP8), else with its bf16 weights, exactly as a worker without FP8 does."""
        fp8 = fp8 and bool(self.fp8_modules)
        placement = self.placement
        before = placement.fp8_job if placement is not None else False
        if placement is not None:
            placement.fp8_job = fp8  # the denoising phase places FP8 or bf16 blocks
        for m in self.fp8_modules:
            m.fp8_on = fp8
        try:
            yield
        finally:
            for m in self.fp8_modules:
                m.fp8_on = False
            if placement is not None:
                placement.fp8_job = before

    def _accelerate(self, fast_captions: bool, warmup_buckets: tuple[tuple[int, int], ...]) -> None:
        """Lossless speed-ups (bench/GPU_NOTES.md), then a warm-up per configured bucket so the first
        user job runs at steady-state speed. Fast captions (on by default) are batch-invariant: an image's
        caption does not depend on its batch-mates or on earlier calls, though in bf16 it can differ from
        the authors' one-at-a-time call; off, the worker makes exactly the authors' call."""
        import torch

        from worker.acceleration import SpeedOptions, prepare

        options = SpeedOptions.for_device(self.device)
        if self.placement is not None:
            # Never the static-cache / compiled `generate` under a memory plan: its graphs keep the
            # addresses of weights that streaming moves. The invariant decoder calls the layers eagerly.
            options = options.replace(caption_static_cache=False, caption_compile=False)
        if not fast_captions:
            options = options.replace(caption_batch_invariant=False, caption_static_cache=False,
                                      caption_compile=False, caption_batch_sizes=(1,))
        self.runner = prepare(self.pipe, options)
        started = time.monotonic()
        if warmup_buckets:
            # Under inference_mode like `run`: a warm-up under no_grad leaves compiled guards that the
            # first real job fails, and it would recompile then (seen on an H200: first job 1.14x).
            with torch.inference_mode():
                self.runner.warmup(list(warmup_buckets), captions=fast_captions)
                if self.fp8_modules:  # the FP8 path's own compiled graphs, now and not in a fast job
                    with self.weights_for(True):
                        self.runner.warmup(list(warmup_buckets), captions=False)
            torch.cuda.empty_cache()
        self.warmup_s = time.monotonic() - started
        log.info("speed-ups on (%s); warm-up %.1f s", options.describe(), self.warmup_s)

    # --- auto-captions (worker/caption_ahead.py decides whose, and when) ----------------------------
    @property
    def fast_captions(self) -> bool:
        """Whether this worker's captions run a fast captioner: the batch-invariant one (the CUDA
        default, under every memory plan) or the static-cache `generate`. Caption look-ahead `auto`
        follows it. (Until the invariant captioner was counted here, `auto` was off on every worker.)"""
        options = getattr(self.runner, "options", None)
        return bool(options is not None and (options.caption_static_cache or options.caption_batch_invariant))

    @property
    def batches_captions(self) -> bool:
        """Whether several images are captioned in one `generate`: only where the captioner is
        batch-invariant, so an image's caption never depends on its batch-mates."""
        options = getattr(self.runner, "options", None)
        return bool(options is not None and getattr(options, "caption_batch_invariant", False))

    @property
    def caption_flavour(self) -> str:
        """Everything besides the image, language and resolution that decides this worker's captions:
        the model, the captioner (the authors' call, or the fast one, which rounds differently), the
        device type and dtype. A caption written ahead is used only by a worker of the same flavour."""
        options = getattr(self.runner, "options", None)
        static = bool(options is not None and options.caption_static_cache)
        how = "+".join(name for name, on in (("static", static), ("invariant", self.batches_captions))
                       if on) or "reference"
        return caption_flavour(self.model_id, how, self.device.type, str(self.dtype).removeprefix("torch."))

    def caption_images(self, images: list[Image.Image], use_en_prompt: bool, resolution: int) -> list[str]:
        """The caption the pipeline would write for each image (an empty prompt), in order: in one
        batched call where the captioner is batch-invariant, else one authors' call per image.
        Raises PipelineFailed as `run` does."""
        import torch

        try:
            with torch.inference_mode():
                if self.runner is not None and self.batches_captions:
                    return list(self.runner.caption_batch(list(images), use_en_prompt, resolution))
                return [self._caption_one(image, use_en_prompt, resolution) for image in images]
        except Exception as exc:
            log.error("captioning failed", exc_info=exc)
            self._release(exc)
            raise PipelineFailed(f"{type(exc).__name__}: {exc}".strip()[:_MAX_ERROR_CHARS]) from exc

    def _caption_one(self, image: Image.Image, use_en_prompt: bool, resolution: int) -> str:
        if image.mode != "RGBA":
            image = image.convert("RGBA")  # as `run` hands it to the pipeline
        if self.runner is not None:  # what the runner's own call does for an empty prompt
            return self.runner.caption(image, use_en_prompt=use_en_prompt, resolution=resolution)
        from worker.accel.captioner import prompt_image_for

        # The pipeline's own caption call, on the image its __call__ would caption.
        prompt_image = prompt_image_for(self.pipe, image, resolution)
        return self.pipe.get_image_caption(prompt_image, use_en_prompt=use_en_prompt,
                                           device=self.pipe._execution_device)

    def run(
        self,
        image: Image.Image,
        params: DecomposeParams,
        on_step: OnStep | None = None,
        should_stop: ShouldStop | None = None,
        caption: str | None = None,
    ) -> list[Image.Image]:
        """Decompose `image` into `params.layer_count` RGBA layers, bottom first, each `output_size(...)`.

        `on_step(done, total)` is called after every denoising step; `should_stop()` is polled there
        too and returns None to go on, or "canceled" / "time_limit" to stop (the auto-caption phase,
        before the first step, cannot be interrupted). `caption`, for a job with an empty prompt, is
        the caption already written for it (`caption_images`): the pipeline uses it where it would
        have captioned, so everything after the caption is the pipeline's own code unchanged.
        """
        import torch

        if params.seed is None:
            raise ValueError("params.seed must be set (DecomposeParams.with_seed) so the job is reproducible")
        if image.mode != "RGBA":
            image = image.convert("RGBA")  # the VAE takes 4 channels; RGB gets an opaque alpha
        shift_terminal = self.pipe.scheduler.config.get("shift_terminal")
        if params.num_inference_steps < 2 and shift_terminal:
            # FlowMatchEulerDiscreteScheduler stretches sigmas to `shift_terminal` by dividing by
            # (1 - last sigma): with one step that is 0/0, every sigma is NaN and the layers come out blank.
            raise ValidationFailed(
                "num_inference_steps must be at least 2 with this model's scheduler", field="num_inference_steps"
            )

        # `quality` other than "exact" runs fewer steps and/or reuses transformer outputs (lossy);
        # `fast` also runs the FP8 weights where this worker has them.
        mode = quality_mode(params.quality)
        if self.placement is not None:
            from worker.memory_plan import PlanDoesNotFit

            try:
                self.placement.begin_job(params.resolution, params.layer_count, fp8=mode.fp8_weights)
            except PlanDoesNotFit as exc:
                raise PipelineFailed(f"this worker's memory plan cannot run the job: {exc}") from None
        # Whitespace-only counts as empty: the pipeline then writes its own caption (None, "" or " ").
        prompt = params.prompt if params.prompt.strip() else None
        steps = mode.steps(params.num_inference_steps)
        step_cache = mode.step_cache()
        started = time.monotonic()
        try:
            with torch.inference_mode(), contextlib.ExitStack() as stack:
                stack.enter_context(self.weights_for(mode.fp8_weights))
                if self.cfg is not None and params.true_cfg_scale > 1:
                    # The negative-prompt passes run on the pair's other GPU (entered first: a step
                    # cache wraps it, so a reused step skips both branches on both ranks).
                    stack.enter_context(self.cfg.active(self.pipe))
                if prompt is None and caption is not None:
                    _hand_over_caption(stack, self.pipe, self.runner, caption)
                if step_cache is not None:
                    # Two transformer calls per step with CFG: the pipeline's `do_true_cfg`, since the
                    # negative prompt is always a string here.
                    calls = 2 if params.true_cfg_scale > 1 else 1
                    stack.enter_context(step_cache.active(self.pipe.transformer, steps, calls))
                output = (self.runner or self.pipe)(
                    image=image,
                    prompt=prompt,
                    negative_prompt=params.negative_prompt,
                    true_cfg_scale=params.true_cfg_scale,
                    layers=params.layer_count,
                    num_inference_steps=steps,
                    resolution=params.resolution,
                    cfg_normalize=params.cfg_normalize,
                    use_en_prompt=params.use_en_prompt,
                    # The authors seed a generator on the GPU itself: same seed, same device → same layers.
                    generator=torch.Generator(device=self.device).manual_seed(params.seed),
                    num_images_per_prompt=1,
                    output_type="pil",
                    callback_on_step_end=step_callback(on_step, should_stop),
                )
        except StopAtStep as stop:
            self._release(stop)
            if stop.error is not None:
                self._release(stop.error)
            raise_stopped(stop)
        except Exception as exc:
            log.error("pipeline failed after %.1f s", time.monotonic() - started, exc_info=exc)
            self._release(exc)
            message = f"{type(exc).__name__}: {exc}".strip()
            raise PipelineFailed(message[:_MAX_ERROR_CHARS]) from exc
        log.info("decomposed into %d layers in %.1f s", params.layer_count, time.monotonic() - started)
        return list(output.images[0])

    def _release(self, exc: BaseException) -> None:
        """After a failed or stopped job, free what it held so the next job starts clean.

        The exception's traceback keeps the pipeline's frames, and their locals keep latents and
        activations alive (GBs on a GPU) for as long as the exception lives: clear those frames (the
        traceback stays printable), then hand the freed blocks back to the CUDA allocator.
        """
        traceback.clear_frames(exc.__traceback__)
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
