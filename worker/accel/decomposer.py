"""`FastDecomposer`: the authors' pipeline call with the speed switches of `SpeedOptions` applied.

The denoising loop is the pipeline's own (`QwenImageLayeredPipeline.__call__`), so the output is the
authors' function: the switches change how the transformer runs (compiled blocks, attention kernel),
what is computed once instead of per job (negative-prompt embeddings, captions) and, only when a lossy
switch is on, what is computed at all. diffusers 0.42.1's loop reads nothing back to the host per
step (checked on the GPU with CUDA's sync debug mode; bench/GPU_NOTES.md), and nothing added here
does either: the step-cache schedule is fixed in advance and the caption is ready before the loop.
"""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from . import attention, joint_attention
from .captioner import Captioner
from .options import SpeedOptions
from .rope import disable_real_rope, enable_real_rope
from .step_cache import StepCache
from .transformer import (
    compile_blocks,
    fuse_gelu_epilogue,
    quantize_fp8,
    uncompile_blocks,
    unfuse_gelu_epilogue,
)

log = logging.getLogger(__name__)

_EMPTY_PROMPTS = (None, "", " ")


class TransformerSwitches:
    """The transformer-level switches of `SpeedOptions`, applied in place to a Qwen-Image pipeline's
    `QwenImageTransformer2DModel` (the layered one or the edit model's plain one): attention kernel,
    fused projections, GELU epilogue, real RoPE, regional compile, FP8. A subclass says how long the
    joint sequence of its jobs is, for the attention probe."""

    def __init__(self, pipe, options: SpeedOptions):
        self.pipe = pipe
        self.options = options
        self.attention_backend: str | None = None
        self.attention_probes: list[attention.BackendProbe] = []
        self.warmup_s: dict[str, float] = {}
        self._replaced_processors: dict = {}

    def _probe_seq_len(self) -> int:
        """Joint sequence length (image + text tokens) of a typical job: the attention probe's shape."""
        raise NotImplementedError

    # --- setup -----------------------------------------------------------------------------------
    def apply(self):
        """Apply the transformer-level switches to the pipeline (done by `prepare`)."""
        o, transformer = self.options, self.pipe.transformer
        if o.fp8_weights:
            quantize_fp8(transformer)
        on_cuda = self.pipe._execution_device.type == "cuda"
        if o.attention_backend == "auto" and not on_cuda:
            self.attention_backend = None
        elif o.attention_backend == "auto":
            seq = self._probe_seq_len()
            heads = transformer.config.num_attention_heads
            head_dim = transformer.config.attention_head_dim
            self.attention_probes = attention.probe_backends(seq, heads, head_dim)
            self.attention_backend = attention.choose_backend(self.attention_probes)
        else:
            self.attention_backend = o.attention_backend
        if o.fused_qkv:
            joint_attention.fuse_qkv(transformer)
        if o.fused_qkv or o.fused_qk_norm_rope or self.attention_backend == attention.FA4:
            unmasked = None
            if self.attention_backend == attention.FA4:
                from . import fa4

                why_not = fa4.available()
                if why_not is not None:
                    raise RuntimeError(f"attention_backend='fa4' but FA4 cannot run here: {why_not}")
                unmasked = fa4.attention
            self._replaced_processors = joint_attention.install(transformer, unmasked, o.fused_qk_norm_rope)
        if self.attention_backend is not None:
            attention.apply_backend(transformer, self.attention_backend)
        if o.gelu_epilogue and on_cuda:
            fuse_gelu_epilogue(transformer)
        if o.real_rope:
            enable_real_rope(transformer)
        if o.compile_blocks:
            compile_blocks(transformer, dynamic=o.compile_dynamic, cuda_graphs=o.cuda_graphs, mode=o.compile_mode,
                           tune_kernels=o.compile_tune_kernels, deterministic=o.compile_deterministic)
        return self

    def restore(self) -> None:
        """Undo the reversible switches (eager blocks, default attention, authors' processors); FP8 stays.
        Fused Q/K/V weights stay shared: the original projections are views into them."""
        transformer = self.pipe.transformer
        uncompile_blocks(transformer)
        disable_real_rope(transformer)
        unfuse_gelu_epilogue(transformer)
        joint_attention.uninstall(self._replaced_processors)
        self._replaced_processors = {}
        joint_attention.unfuse_qkv(transformer)
        attention.apply_backend(transformer, None)


class FastDecomposer(TransformerSwitches):
    """Call it like the pipeline; see `prepare()`."""

    def __init__(self, pipe, options: SpeedOptions):
        super().__init__(pipe, options)
        self.captioner = Captioner(pipe, options)
        self._negative: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.last_step_cache: StepCache | None = None

    def _probe_seq_len(self) -> int:
        return self._bucket_seq_len(640, 4)

    def _bucket_seq_len(self, resolution: int, layers: int) -> int:
        """Joint sequence length of a square job at `resolution` (image tokens + ~64 text tokens)."""
        side = resolution // (self.pipe.vae_scale_factor * 2)
        return (layers + 2) * side * side + 64

    # --- jobs ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image=None, prompt=None, negative_prompt=None, **kwargs):
        """Same arguments and output as `QwenImageLayeredPipeline.__call__`."""
        o, pipe = self.options, self.pipe
        if o.num_inference_steps is not None:
            kwargs["num_inference_steps"] = o.num_inference_steps
        with contextlib.ExitStack() as stack:
            if prompt in _EMPTY_PROMPTS and kwargs.get("prompt_embeds") is None and image is not None:
                caption = self.caption(
                    image[0] if isinstance(image, list) else image,
                    use_en_prompt=kwargs.get("use_en_prompt", False),
                    resolution=kwargs.get("resolution", 640),
                )
                # The pipeline captions when the prompt is empty: hand it ours, so everything after the
                # caption (including an empty caption's handling) is exactly its own code.
                stack.enter_context(patched(pipe, "get_image_caption", lambda *a, **k: caption))
            true_cfg = kwargs.get("true_cfg_scale", 4.0) > 1
            if (
                o.cache_negative_embeds
                and true_cfg
                and isinstance(negative_prompt, str)
                and kwargs.get("negative_prompt_embeds") is None
            ):
                embeds, mask = self.negative_embeds(negative_prompt, kwargs.get("max_sequence_length", 512))
                kwargs["negative_prompt_embeds"], kwargs["negative_prompt_embeds_mask"] = embeds, mask
                negative_prompt = None
            if o.step_cache_interval > 1:
                cache = StepCache(o.step_cache_interval, o.step_cache_window)
                cfg_on = true_cfg and (negative_prompt is not None or "negative_prompt_embeds" in kwargs)
                steps = kwargs.get("num_inference_steps", 50)
                stack.enter_context(cache.active(pipe.transformer, steps, 2 if cfg_on else 1))
                self.last_step_cache = cache
            return pipe(image=image, prompt=prompt, negative_prompt=negative_prompt, **kwargs)

    def negative_embeds(self, negative_prompt: str, max_sequence_length: int = 512):
        """(embeds, mask) for `negative_prompt`, encoded once per prompt and reused."""
        key = (negative_prompt, max_sequence_length)
        if key not in self._negative:
            embeds, mask = self.pipe.encode_prompt(
                prompt=negative_prompt,
                device=self.pipe._execution_device,
                max_sequence_length=max_sequence_length,
            )
            if mask is None:  # all tokens valid; pass the explicit mask the pipeline would drop again
                mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            self._negative[key] = (embeds, mask)
        return self._negative[key]

    def caption(self, image, use_en_prompt: bool = False, resolution: int = 640) -> str:
        return self.captioner.caption(image, use_en_prompt, resolution)

    def caption_batch(self, images: list, use_en_prompt: bool = False, resolution: int = 640) -> list[str]:
        """Caption several queued jobs' images together (one batched `generate`, or the batch-invariant
        decoder with `caption_batch_invariant`); results are cached."""
        return self.captioner.caption_batch(images, use_en_prompt, resolution)

    # --- warm-up ---------------------------------------------------------------------------------
    def warmup(
        self, buckets: list[tuple[int, int]] | tuple[tuple[int, int], ...], steps: int = 2, captions: bool = True
    ) -> dict:
        """Run each (resolution, layers) bucket briefly so compilation happens now, not in a user's job.

        Two aspect ratios per bucket make sure a new image shape reuses the compiled code. Captions are
        warmed for every configured batch size. Returns seconds spent per item.
        """
        from PIL import Image

        for resolution, layers in buckets:
            for size in ((resolution, resolution), (resolution, resolution * 3 // 4)):
                t0 = time.perf_counter()
                self(
                    image=Image.new("RGBA", size, (200, 120, 60, 255)),
                    prompt="warm-up: a poster with a title and a photo",
                    negative_prompt=" ",
                    true_cfg_scale=4.0,
                    layers=layers,
                    resolution=resolution,
                    num_inference_steps=steps,
                    cfg_normalize=True,
                    generator=torch.Generator(device="cpu").manual_seed(0),
                )
                _sync()
                self.warmup_s[f"decompose {resolution}/{layers} {size[0]}x{size[1]}"] = time.perf_counter() - t0
        if captions and (self.options.caption_static_cache or self.options.caption_batch_invariant) and buckets:
            t0 = time.perf_counter()
            self.captioner.warmup(max(r for r, _ in buckets))
            _sync()
            self.warmup_s["captions"] = time.perf_counter() - t0
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # give back what compilation and the warm-up shapes left cached
        return dict(self.warmup_s)


def prepare(pipe, options: SpeedOptions | None = None) -> FastDecomposer:
    """Apply `options` (default: `SpeedOptions.for_device(pipe's device)`) to a loaded pipeline."""
    if options is None:
        options = SpeedOptions.for_device(pipe._execution_device)
    fast = FastDecomposer(pipe, options).apply()
    if options.warmup_buckets:
        fast.warmup(options.warmup_buckets)
    return fast


@contextlib.contextmanager
def patched(obj, name: str, value):
    """`obj.name = value` for the block; afterwards the old instance attribute, or none again."""
    had = name in obj.__dict__
    old = obj.__dict__.get(name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, name, old)
        else:
            delattr(obj, name)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
