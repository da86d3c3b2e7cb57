"""Fast auto-captions with the pipeline's own text encoder, producing the captions it would produce.

`QwenImageLayeredPipeline.get_image_caption` runs one `generate` per image with a dynamic KV cache.
The `Captioner` runs the same prompt, image preprocessing and generation settings, and caches captions
by the image's content hash and language. Two ways to make them fast:

* `caption_batch_invariant` (worker/accel/caption_decode.py): each image prefilled alone, then all
  decoded together in a fixed batch with one CUDA-graph step per token. An image's tokens do not depend
  on its batch-mates or on earlier calls (bf16 on an H200: bench/GPU_NOTES.md, run 14).
* `generate` with a static KV cache and compiled decoding, several images in one left-padded batch. In
  bf16 on a GPU this is not invariant: the same call repeated gave other tokens (GPU_NOTES, runs 12-13).

"Same as the authors" is exact in float32 for both (tests: token for token on CPU). In bf16 on a GPU any
other kernel shape rounds differently and greedy decoding turns a flipped near-tie into another
continuation. With `caption_static_cache=False, caption_compile=False, caption_batch_sizes=(1,)` and the
invariant mode off, the captioner makes exactly the authors' call and keeps only the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import OrderedDict

import torch

from .options import CAPTION_MAX_NEW_TOKENS, SpeedOptions

log = logging.getLogger(__name__)


def prompt_image_for(pipe, image, resolution: int):
    """The resized image the pipeline captions (same computation as its `__call__`)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_layered import calculate_dimensions

    width, height = calculate_dimensions(resolution * resolution, image.size[0] / image.size[1])
    return pipe.image_processor.resize(image, height, width)


def image_key(prompt_image, use_en_prompt: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"{prompt_image.mode}:{prompt_image.size}:{bool(use_en_prompt)}:".encode())
    digest.update(prompt_image.tobytes())
    return digest.hexdigest()


class Captioner:
    """Batched, cached captioning for one loaded pipeline."""

    def __init__(self, pipe, options: SpeedOptions):
        self.pipe = pipe
        self.options = options
        self._cache: OrderedDict[str, str] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.generate_calls = 0
        self._decoders: dict = {}  # key length -> caption_decode.FixedBatchDecoder (batch-invariant mode)

    # --- public ----------------------------------------------------------------------------------
    def caption(self, image, use_en_prompt: bool = False, resolution: int = 640) -> str:
        return self.caption_batch([image], use_en_prompt, resolution)[0]

    def caption_batch(
        self,
        images: list,
        use_en_prompt: bool = False,
        resolution: int = 640,
        max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    ) -> list[str]:
        """Captions for `images` (original images; resized here as the pipeline would)."""
        prompt_images = [prompt_image_for(self.pipe, im, resolution) for im in images]
        use_cache = self.options.caption_cache_entries > 0 and max_new_tokens == CAPTION_MAX_NEW_TOKENS
        keys = [image_key(p, use_en_prompt) for p in prompt_images]
        results: list[str | None] = [None] * len(images)
        todo: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if use_cache and key in self._cache:
                self._cache.move_to_end(key)
                results[i] = self._cache[key]
                self.hits += 1
            else:
                todo.setdefault(key if use_cache else f"{key}:{i}", []).append(i)
        pending = list(todo.values())
        self.misses += len(pending)
        chunk = max(self.options.caption_batch_sizes) if self.options.caption_batch_sizes else 1
        for start in range(0, len(pending), chunk):
            group = pending[start : start + chunk]
            ids = self.generate_ids([prompt_images[g[0]] for g in group], use_en_prompt, max_new_tokens)
            texts = self._decode(ids)
            for indices, text in zip(group, texts):
                for i in indices:
                    results[i] = text
                if use_cache:
                    self._remember(keys[indices[0]], text)
        return results  # type: ignore[return-value]

    def warmup(self, resolution: int = 640, batch_sizes: tuple[int, ...] | None = None) -> None:
        """Compile and record decoding for each batch shape (a few tokens each; not cached); in the
        batch-invariant mode, capture its decode step's CUDA graph."""
        from PIL import Image

        dummy = Image.new("RGBA", (resolution, resolution), (120, 80, 40, 255))
        prompt_image = prompt_image_for(self.pipe, dummy, resolution)
        if self.options.caption_batch_invariant:  # one shape for every batch: one image captures it
            batch_sizes = (1,)
        for size in batch_sizes or self.options.caption_batch_sizes:
            self.generate_ids([prompt_image] * size, True, max_new_tokens=8)

    # --- generation ------------------------------------------------------------------------------
    def _bucket(self, n: int) -> int:
        sizes = sorted(self.options.caption_batch_sizes) or [n]
        return next((s for s in sizes if s >= n), n)

    def generate_ids(self, prompt_images: list, use_en_prompt: bool, max_new_tokens: int) -> list[list[int]]:
        """New-token ids per image (batch padded up to a configured size).

        With `caption_batch_invariant` the images go through `worker.accel.caption_decode` instead of
        `generate`: each image's tokens then do not depend on its batch-mates or on earlier calls."""
        if self.options.caption_batch_invariant:
            return self._invariant_ids(prompt_images, use_en_prompt, max_new_tokens)
        return self._generate(prompt_images, use_en_prompt, max_new_tokens, self._bucket(len(prompt_images)))

    def _prompt(self, use_en_prompt: bool) -> str:
        return self.pipe.image_caption_prompt_en if use_en_prompt else self.pipe.image_caption_prompt_cn

    def _invariant_ids(self, prompt_images: list, use_en_prompt: bool, max_new_tokens: int) -> list[list[int]]:
        """Batch-1 prefill per image, then decoding in a fixed batch at a key length fixed by the
        row's own prompt length (`caption_max_cache_len` when it fits)."""
        from .caption_decode import FixedBatchDecoder, Selection, Unsupported, fixed_length, prefill

        pipe, te = self.pipe, self.pipe.text_encoder
        try:
            selection = Selection.from_config(te.generation_config)
        except Unsupported as exc:  # a model whose captions are not greedy: the authors' call, unbatched
            log.warning("batch-invariant captions unavailable (%s); captioning with generate", exc)
            return [self._generate([p], use_en_prompt, max_new_tokens, 1)[0] for p in prompt_images]
        device = pipe._execution_device
        batch = max(self.options.caption_batch_sizes or (1,))
        results: list[list[int] | None] = [None] * len(prompt_images)
        # Under a memory plan (worker/block_streaming.py) the whole batch runs in the placement's caption
        # phase: the transformer's blocks off the GPU, as many text layers on as fit (more while
        # decoding, with the vision tower and the embedding table off). The decode calls the layers
        # directly, so the phase is entered here and not by the text encoder's hooks.
        placement = getattr(te, "layerq_placement", None)
        # The processor's token count is the prefill's length: rows are grouped by key length before
        # any prefill, so each chunk is prefilled straight into its decoder's buffers (`load`) and only
        # one row's own KV exists at a time. Under a memory plan that is 0.9 GiB more room for text
        # layers while decoding (worker/memory_plan.py counts the buffers once, not twice).
        prompt = self._prompt(use_en_prompt)
        inputs = [pipe.vl_processor(text=[prompt], images=[image], return_tensors="pt") for image in prompt_images]
        groups: dict[int, list[int]] = {}
        for i, inp in enumerate(inputs):
            length = fixed_length(int(inp["input_ids"].shape[1]), max_new_tokens, self.options.caption_max_cache_len)
            groups.setdefault(length, []).append(i)
        with contextlib.ExitStack() as stack:
            if device.type == "cuda":
                # One kernel per prompt length in the prefill; cuDNN would plan each length anew.
                stack.enter_context(no_cudnn_sdpa())
            if placement is not None:
                stack.enter_context(placement.captioning())
                # Freed with the batch: 0.9 GiB the plan counts in the caption phase only.
                stack.callback(self._decoders.clear)
            for length, indices in sorted(groups.items()):
                decoder = self._decoders.get(length)
                if decoder is None or decoder.batch != batch:
                    if placement is not None:
                        self._decoders.clear()  # one set of buffers at a time under a plan
                    decoder = self._decoders[length] = FixedBatchDecoder(te, selection, batch, length, device=device)
                for start in range(0, len(indices), batch):
                    chunk = indices[start : start + batch]
                    if placement is not None:
                        placement.prefill_captions()  # back from a previous chunk's decode, if any
                    decoder.begin()
                    for slot, i in enumerate(chunk):
                        row = prefill(te, inputs[i].to(device), selection)
                        decoder.load(slot, row, max_new_tokens)
                        del row  # its KV now lives in the buffers
                    if placement is not None:
                        placement.decode_captions()
                    for i, ids in zip(chunk, decoder.run(len(chunk), max_new_tokens)):
                        results[i] = ids
                    self.generate_calls += 1
        return results  # type: ignore[return-value]

    def _generate(
        self, prompt_images: list, use_en_prompt: bool, max_new_tokens: int, batch_size: int
    ) -> list[list[int]]:
        """One `generate` over `prompt_images` padded to `batch_size` rows."""
        pipe = self.pipe
        n = len(prompt_images)
        batch = list(prompt_images) + [prompt_images[-1]] * (batch_size - n)
        device = pipe._execution_device
        inputs = pipe.vl_processor(
            text=[self._prompt(use_en_prompt)] * len(batch),
            images=batch,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        self._use_unused_pad_id(inputs)
        kwargs = {"max_new_tokens": max_new_tokens}
        if self.options.caption_static_cache:
            kwargs["cache_implementation"] = "static"
            kwargs["max_cache_len"] = self.options.caption_max_cache_len
            kwargs["disable_compile"] = not self.options.caption_compile
        # Decoding with a growing KV cache on CUDA: keep cuDNN attention out (see no_cudnn_sdpa).
        growing = device.type == "cuda" and not self.options.caption_static_cache
        with contextlib.ExitStack() as stack:
            if growing:
                stack.enter_context(no_cudnn_sdpa())
            out = pipe.text_encoder.generate(**inputs, **kwargs)
        self.generate_calls += 1
        new_tokens = out[:n, inputs["input_ids"].shape[1] :]
        return new_tokens.tolist()

    def _use_unused_pad_id(self, inputs) -> None:
        """Left padding must not change a row's result. A repetition penalty (the real model's generation
        config has one) would also penalise the pad token in padded rows only; where the embedding has
        rows beyond the tokenizer's vocabulary, pad with one of those never-generated ids instead."""
        mask = inputs["attention_mask"]
        if bool(mask.all()):
            return
        vocab = self.pipe.text_encoder.config.get_text_config().vocab_size
        if vocab > len(self.pipe.tokenizer):
            inputs["input_ids"] = inputs["input_ids"].masked_fill(mask == 0, vocab - 1)

    def _decode(self, ids: list[list[int]]) -> list[str]:
        texts = self.pipe.vl_processor.batch_decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [t.strip() for t in texts]

    def _remember(self, key: str, text: str) -> None:
        self._cache[key] = text
        self._cache.move_to_end(key)
        while len(self._cache) > self.options.caption_cache_entries:
            self._cache.popitem(last=False)

    def cached(self, image, use_en_prompt: bool, resolution: int) -> str | None:
        """The cached caption for `image`, if any (no generation)."""
        if self.options.caption_cache_entries <= 0:
            return None
        return self._cache.get(image_key(prompt_image_for(self.pipe, image, resolution), use_en_prompt))


def no_cudnn_sdpa() -> contextlib.AbstractContextManager:
    """SDPA without PyTorch's cuDNN attention, for token-by-token decoding with a growing KV cache:
    cuDNN builds a new plan for every new key length (on an H200, torch 2.11, the tiny model's first
    512-token caption took 36 s instead of 2.7 s). Flash and memory-efficient attention have no such
    cost; the denoising loop keeps every backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@torch.no_grad()
def reference_caption_ids(pipe, prompt_image, use_en_prompt: bool, max_new_tokens: int = 512) -> list[int]:
    """The authors' `get_image_caption` up to the decode, returning token ids (for comparisons)."""
    prompt = pipe.image_caption_prompt_en if use_en_prompt else pipe.image_caption_prompt_cn
    inputs = pipe.vl_processor(text=prompt, images=prompt_image, padding=True, return_tensors="pt").to(
        pipe._execution_device
    )
    out = pipe.text_encoder.generate(**inputs, max_new_tokens=max_new_tokens)
    return out[0, inputs["input_ids"].shape[1] :].tolist()
