"""The worker's memory plan: how the model's weights are placed on a card of a given size.

Chosen once at worker start from the card's memory (`torch.cuda.mem_get_info`) or from
`LAYERQ_GPU_MEMORY_GIB`, logged, and published with the worker's heartbeat (`/healthz`):

- `full`: everything on the GPU, today's path (the real model needs ~54 GiB of weights + ~7 GiB for a
  640-bucket job).
- `partial`: the transformer keeps as many of its 60 blocks on the GPU as the budget allows and streams
  the others from pinned host memory, each copied on a side stream while the block before it computes
  (`worker/block_streaming.py`). The text encoder is off the GPU between prompts: while a prompt is
  encoded its layers stream past the resident transformer; while a caption is written (512 forwards) the
  transformer's blocks are dropped and as many text-encoder layers as fit stay on the GPU. Weights never
  change, so dropping a copy costs nothing and bringing it back is one host→device copy.
- `streamed`: the same with no transformer block resident (smallest cards).
- `transformer-resident`: all 60 blocks fit once the text encoder is off the GPU (e.g. 46 GiB).

The arithmetic here is pure (no torch) so it is unit-tested on its own: `choose_plan(budget, footprint,
buckets)`. Activation sizes are estimated from the model's dimensions with factors fitted to the
full-size model on an H200 (bench/GPU_NOTES.md, issue 17); everything else is counted from the loaded
weights.

FP8 for `quality=fast` jobs (`worker/accel/fp8.py`): where the card has FP8 matrix units and the worker
allows it (`LAYERQ_FP8_FAST`), an FP8 copy of every transformer block's linear weights is made once at
start, beside the bf16 weights that `exact` and `balanced` jobs keep using unchanged. A plan is still
chosen for bf16 (every job must fit); fast jobs then place FP8 blocks, about half a bf16 block's bytes,
so more of them stay resident and the streamed ones copy half the bytes. Under `full` the FP8 copy
lives on the GPU (only where it fits beside the bf16 weights); under the other plans it is pinned on
the host next to the bf16 master (`pinned_host_bytes` counts it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

GIB = 2**30

# Bytes kept free of any estimate: allocator fragmentation and kernels' workspaces (cuBLAS, attention).
MARGIN_BYTES = GIB
MARGIN_FRACTION = 0.04
# Activations of one transformer call, in units of (joint tokens × inner dim × dtype bytes): the
# residual stream, the 4× MLP intermediate, q/k/v and the attention output, with the modulation's
# float32 temporaries; set so a 640-bucket, 4-layer job of the real model reserves 2 GiB (counted for
# ~1 GiB inside one block: q/k/v, the roped copies, fc1's 9600 × 12288 output; bench checks the peak).
DENOISE_ACTIVATION_FACTOR = 33
# The VAE decode's peak in units of (output pixels × frames × VAE base channels × dtype bytes):
# +6.6 GiB for 640² × 5 frames × 96 channels in bf16 on the real model (bench/GPU_NOTES.md run 7).
DECODE_ACTIVATION_FACTOR = 18
# A caption: the vision tower on the input image and a KV cache for prompt + 512 new tokens, in units of
# (tokens × text hidden size × dtype bytes) for 2048 tokens.
CAPTION_TOKENS = 2048
CAPTION_ACTIVATION_FACTOR = 64
# Rows the batch-invariant captioner decodes together (max(SpeedOptions.caption_batch_sizes); a test
# keeps the two equal). Its fixed-batch KV buffers are CAPTION_DECODE_BATCH x CAPTION_TOKENS tokens of
# K and V in every layer (0.9 GiB for the real model). They exist from the first prefill on, and each row
# is copied into them right after its own prefill, so besides them one row's KV (an eighth) exists at a
# time (worker/accel/captioner.py): while decoding, only the buffers.
CAPTION_DECODE_BATCH = 8
# Text tokens a transformer call sees at most (the pipeline's max_sequence_length).
MAX_TEXT_TOKENS = 1024
# A streamed group needs its own copy on the GPU plus the next one prefetched.
STREAM_BUFFERS = 2


class PlanDoesNotFit(ValueError):
    """The budget cannot hold even the fully streamed model with a job's activations."""


@dataclass(frozen=True)
class ModelFootprint:
    """Bytes of the loaded weights, split the way a plan places them, and the dimensions that size the
    activations. `from_pipeline` reads them off a loaded `QwenImageLayeredPipeline`."""

    transformer_block_bytes: int
    transformer_blocks: int
    transformer_rest_bytes: int
    text_layer_bytes: int
    text_layers: int
    text_rest_bytes: int
    vae_bytes: int
    transformer_inner_dim: int
    text_hidden_size: int
    vae_base_dim: int
    dtype_bytes: int
    patch_pixels: int = 16
    """Pixels per latent token side: the VAE's 8× times the transformer's 2×2 patches."""
    fp8_block_bytes: int = 0
    """A transformer block as a fast job holds it: its linears' FP8 copies (e4m3 + per-row scales) and
    its other tensors (biases, norms) in bf16; 0: not counted (no FP8)."""
    fp8_copy_block_bytes: int = 0
    """The FP8 copy made per block (what FP8 adds to the worker's memory)."""
    text_kv_token_bytes: int = 0
    """K and V of one token in every text-encoder layer (layers x 2 x kv heads x head dim x dtype)."""
    text_prefill_only_bytes: int = 0
    """Text-encoder weights a caption's decode never reads (the vision tower; the input embedding
    table where it is not tied to the output head): off the GPU while captions decode."""

    @property
    def transformer_bytes(self) -> int:
        return self.transformer_block_bytes * self.transformer_blocks + self.transformer_rest_bytes

    @property
    def text_encoder_bytes(self) -> int:
        return self.text_layer_bytes * self.text_layers + self.text_rest_bytes

    @property
    def total_bytes(self) -> int:
        return self.transformer_bytes + self.text_encoder_bytes + self.vae_bytes

    @property
    def fp8_copy_bytes(self) -> int:
        return self.fp8_copy_block_bytes * self.transformer_blocks

    def block_bytes(self, fp8: bool = False) -> int:
        """One transformer block on the GPU: bf16, or as a fast job with FP8 weights holds it."""
        return self.fp8_block_bytes if fp8 and self.fp8_block_bytes else self.transformer_block_bytes

    def tokens(self, resolution: int, layers: int) -> int:
        """Joint sequence length of a square job: (layers + composite + input image) × patches + text."""
        side = resolution // self.patch_pixels
        return (layers + 2) * side * side + MAX_TEXT_TOKENS

    def denoise_activation_bytes(self, resolution: int, layers: int) -> int:
        return self.tokens(resolution, layers) * self.transformer_inner_dim * self.dtype_bytes * DENOISE_ACTIVATION_FACTOR

    def decode_activation_bytes(self, resolution: int, layers: int) -> int:
        frames = layers + 1
        return resolution * resolution * frames * self.vae_base_dim * self.dtype_bytes * DECODE_ACTIVATION_FACTOR

    def caption_activation_bytes(self) -> int:
        return CAPTION_TOKENS * self.text_hidden_size * self.dtype_bytes * CAPTION_ACTIVATION_FACTOR

    def caption_kv_bytes(self) -> int:
        """The batch-invariant captioner's fixed-batch KV buffers (worker/accel/caption_decode.py)."""
        return CAPTION_DECODE_BATCH * CAPTION_TOKENS * self.text_kv_token_bytes

    def prompt_activation_bytes(self) -> int:
        """Encoding one prompt with the text encoder's layers streamed: its non-layer weights, two
        layers in flight and the activations of ~1.3 k tokens (prompt + image tokens)."""
        return self.text_rest_bytes + STREAM_BUFFERS * self.text_layer_bytes + self.caption_activation_bytes()

    @classmethod
    def from_pipeline(cls, pipe: Any) -> "ModelFootprint":
        from worker.accel.fp8 import converted, fp8_bytes, fp8_tensors
        from worker.block_streaming import text_layers, transformer_blocks

        copies = {id(t) for t in fp8_tensors(converted(pipe.transformer))}

        def nbytes(module: Any) -> int:
            seen: set[int] = set(copies)  # the bf16 model only, FP8 copies made or not
            total = 0
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
            return total

        blocks = transformer_blocks(pipe.transformer)
        layers = text_layers(pipe.text_encoder)
        block_bytes = max(nbytes(b) for b in blocks)
        replaced, fp8_copy = max(fp8_bytes(b) for b in blocks)
        layer_bytes = max(nbytes(b) for b in layers)
        text_cfg = pipe.text_encoder.config.get_text_config()
        tcfg = pipe.transformer.config
        from worker.block_streaming import _prefill_only_modules

        prefill_only = sum(
            t.numel() * t.element_size()
            for m in _prefill_only_modules(pipe.text_encoder) for t in [*m.parameters(False), *m.buffers(False)]
        )
        head_dim = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // text_cfg.num_attention_heads
        dtype_bytes = next(pipe.text_encoder.parameters()).element_size()
        return cls(
            transformer_block_bytes=block_bytes,
            transformer_blocks=len(blocks),
            transformer_rest_bytes=nbytes(pipe.transformer) - sum(nbytes(b) for b in blocks),
            text_layer_bytes=layer_bytes,
            text_layers=len(layers),
            text_rest_bytes=nbytes(pipe.text_encoder) - sum(nbytes(b) for b in layers),
            vae_bytes=nbytes(pipe.vae),
            transformer_inner_dim=int(tcfg.num_attention_heads * tcfg.attention_head_dim),
            text_hidden_size=int(text_cfg.hidden_size),
            vae_base_dim=int(getattr(pipe.vae.config, "base_dim", 96)),
            dtype_bytes=next(pipe.transformer.parameters()).element_size(),
            patch_pixels=int(pipe.vae_scale_factor) * 2,
            fp8_block_bytes=block_bytes - replaced + fp8_copy,
            fp8_copy_block_bytes=fp8_copy,
            text_kv_token_bytes=int(len(layers) * 2 * text_cfg.num_key_value_heads * head_dim * dtype_bytes),
            text_prefill_only_bytes=int(prefill_only),
        )


def resident_indices(total: int, resident: int) -> list[int]:
    """Which of `total` blocks stay on the GPU: the streamed ones are spread evenly between them, so
    each streamed block's copy overlaps the compute of the resident blocks before it."""
    resident = max(0, min(total, resident))
    streamed = total - resident
    if streamed == 0:
        return list(range(total))
    out = {min(total - 1, int((j + 0.5) * total / streamed)) for j in range(streamed)}
    # int() of evenly spaced points never collides for streamed <= total; keep the count exact anyway.
    i = 0
    while len(out) < streamed:
        out.add(i)
        i += 1
    return [k for k in range(total) if k not in out]


@dataclass(frozen=True)
class MemoryPlan:
    """Where the weights live for a worker with `budget_bytes` of GPU memory; see the module doc."""

    name: str
    budget_bytes: int
    footprint: ModelFootprint
    sized_for: tuple[int, int]
    """The (resolution, layers) bucket `resident_blocks` is reported for (the largest configured)."""
    device_type: str = "cuda"
    source: str = "card"
    """Where the budget came from: `card` (mem_get_info), `LAYERQ_GPU_MEMORY_GIB`, or `host` (CPU)."""
    vae_tiling: bool = False
    caption_text_layers: int = 0
    """Text-encoder layers resident while captions are prefilled (the rest stream per forward)."""
    notes: tuple[str, ...] = field(default=())
    fp8: bool = False
    """Fast jobs run with FP8 transformer weights (see the module doc)."""
    fp8_why_not: str = ""
    """Why fast jobs keep bf16 weights, when `fp8` is off."""
    caption_decode_text_layers: int = -1
    """Text-encoder layers resident while captions decode (vision tower and embedding off the GPU);
    -1: as many as while prefilling."""

    @property
    def usable_bytes(self) -> int:
        return usable_bytes(self.budget_bytes)

    @property
    def full(self) -> bool:
        return self.name == "full"

    def block_bytes(self, fp8: bool = False) -> int:
        """One block on the GPU for a job with (`fp8`, a fast job where the plan has FP8) or without."""
        return self.footprint.block_bytes(fp8 and self.fp8)

    def denoise_reserve(self, resolution: int, layers: int, fp8: bool = False) -> int:
        """GPU bytes a job of this bucket needs besides the resident blocks while denoising."""
        fp = self.footprint
        return (
            fp.transformer_rest_bytes + fp.vae_bytes + STREAM_BUFFERS * self.block_bytes(fp8)
            + fp.denoise_activation_bytes(resolution, layers)
        )

    def prompt_blocks_for(self, resolution: int, layers: int, fp8: bool = False) -> int:
        """Transformer blocks that may stay on the GPU while a prompt is encoded (the text encoder's
        other weights, two streamed layers and the activations beside them) and the input image is
        VAE-encoded (one frame); the next denoising phase copies back the ones dropped."""
        fp = self.footprint
        if self.full:
            return fp.transformer_blocks
        room = (
            self.usable_bytes - fp.transformer_rest_bytes - fp.vae_bytes - fp.prompt_activation_bytes()
            - fp.decode_activation_bytes(resolution, 0)
        )
        return max(0, min(self.resident_blocks_for(resolution, layers, fp8), room // self.block_bytes(fp8)))

    def resident_blocks_for(self, resolution: int, layers: int, fp8: bool = False) -> int:
        """Transformer blocks kept on the GPU while denoising a job of this bucket; raises
        PlanDoesNotFit when even streaming every block leaves no room for its activations."""
        fp = self.footprint
        if self.full:
            return fp.transformer_blocks
        # Every job must fit in bf16 (exact jobs run on the same worker): checked with bf16 blocks.
        need = self.denoise_reserve(resolution, layers)
        if self.usable_bytes < need:
            raise PlanDoesNotFit(
                f"a {resolution}-bucket job with {layers} layers needs {need / GIB:.1f}"
                f" GiB besides the streamed weights; this worker's plan has {self.usable_bytes / GIB:.1f} GiB"
            )
        room = self.usable_bytes - self.denoise_reserve(resolution, layers, fp8)
        return min(fp.transformer_blocks, room // self.block_bytes(fp8))

    def decode_blocks_for(self, resolution: int, layers: int, fp8: bool = False) -> int:
        """Transformer blocks that may stay on the GPU while the VAE decodes (the rest are dropped and
        copied back by the next job's denoising)."""
        fp = self.footprint
        if self.full:
            return fp.transformer_blocks
        room = (
            self.usable_bytes - fp.transformer_rest_bytes - fp.vae_bytes
            - self._decode_need(resolution, layers)
        )
        return max(0, min(self.resident_blocks_for(resolution, layers, fp8), room // self.block_bytes(fp8)))

    def _decode_need(self, resolution: int, layers: int) -> int:
        need = self.footprint.decode_activation_bytes(resolution, layers)
        return need // TILED_DECODE_SHRINK if self.vae_tiling else need

    @property
    def resident_blocks(self) -> int:
        return self.resident_blocks_for(*self.sized_for)

    @property
    def pinned_host_bytes(self) -> int:
        """Pinned host memory the plan holds: every weight that moves (all transformer blocks, since
        captions drop them too, and the whole text encoder). The transformer's other modules and the
        VAE stay on the GPU."""
        if self.full:
            return 0
        fp = self.footprint
        fp8_copy = fp.fp8_copy_bytes if self.fp8 else 0
        return fp.transformer_block_bytes * fp.transformer_blocks + fp.text_encoder_bytes + fp8_copy

    def fast_jobs(self) -> dict[str, Any]:
        """What a `quality=fast` job gets under this plan (shown in /healthz)."""
        fp = self.footprint
        if not self.fp8:
            return {"weights": "bf16", "why": self.fp8_why_not}
        resident = self.resident_blocks_for(*self.sized_for, fp8=True)
        return {
            "weights": "fp8 (e4m3, per-row scales)",
            "resident_blocks": resident,
            "streamed_blocks": fp.transformer_blocks - resident,
            "fp8_copy_gib": round(fp.fp8_copy_bytes / GIB, 2),
            # Under `full` the copy sits beside the weights on the device (the host, for a CPU worker).
            "fp8_copy_on": ("gpu" if self.device_type == "cuda" else "host") if self.full else "host (pinned)",
        }

    @property
    def caption_decode_drops_prefill(self) -> bool:
        """While captions decode, the vision tower and the embedding table leave the GPU to make room
        for text layers: only where the prefill could not keep every layer (otherwise the layers stay
        still and the decode step runs as a CUDA graph, which a host-side lookup would prevent)."""
        return self.caption_text_layers < self.footprint.text_layers

    @property
    def decode_text_layers(self) -> int:
        """`caption_decode_text_layers`, or the prefill's count where not set."""
        return self.caption_text_layers if self.caption_decode_text_layers < 0 else self.caption_decode_text_layers

    def text_encoder_placement(self) -> str:
        if self.full:
            return "gpu"
        fp = self.footprint
        return (
            f"host (pinned); streamed past the resident transformer blocks to encode a prompt; "
            f"{self.caption_text_layers} of {fp.text_layers} layers on the GPU while captions are prefilled, "
            f"{self.decode_text_layers} while they decode"
        )

    def captions(self) -> dict[str, Any]:
        """How auto-captions run under this plan (shown in /healthz)."""
        fp = self.footprint
        out: dict[str, Any] = {
            "batched": CAPTION_DECODE_BATCH, "batch_invariant": True,
            "kv_buffers_gib": round(fp.caption_kv_bytes() / GIB, 2),
        }
        if not self.full:
            out["text_layers_resident"] = {"prefill": self.caption_text_layers, "decode": self.decode_text_layers,
                                           "of": fp.text_layers}
            out["decode"] = ("CUDA graph (every text layer resident)" if self.decode_text_layers == fp.text_layers
                             and not self.caption_decode_drops_prefill else
                             "eager (streamed layers move: no CUDA graph)")
        return out

    def describe(self) -> dict[str, Any]:
        """The plan as a plain dict (logged at start, published with the heartbeat, shown in /healthz)."""
        fp = self.footprint
        resident = self.resident_blocks
        return {
            "name": self.name,
            "source": self.source,
            "device": self.device_type,
            "budget_gib": round(self.budget_bytes / GIB, 2),
            "weights_gib": round(fp.total_bytes / GIB, 2),
            "sized_for": f"{self.sized_for[0]}x{self.sized_for[1]}",
            "resident_blocks": resident,
            "streamed_blocks": fp.transformer_blocks - resident,
            "text_encoder": self.text_encoder_placement(),
            "captions": self.captions(),
            "vae_tiling": self.vae_tiling,
            "fp8_fast_quality": self.fp8,
            "fast_jobs": self.fast_jobs(),
            "pinned_host_gib": round(self.pinned_host_bytes / GIB, 2),
            "notes": list(self.notes),
        }


# Tiled decoding keeps a few tiles' activations instead of the whole frame stack (diffusers' tiles are
# 256 px with overlap: at 1024 px about 1/8 of the untiled peak; 1/4 assumed to stay on the safe side).
TILED_DECODE_SHRINK = 4


def usable_bytes(budget_bytes: int) -> int:
    return int(budget_bytes - MARGIN_BYTES - MARGIN_FRACTION * budget_bytes)


def choose_plan(
    budget_bytes: int, footprint: ModelFootprint, buckets: tuple[tuple[int, int], ...] = ((640, 4),), *,
    device_type: str = "cuda", source: str = "card", fp8: bool = False, fp8_why_not: str = "",
) -> MemoryPlan:
    """The plan for a card with `budget_bytes` free that must run jobs of every bucket in `buckets`.

    `full` when weights and the largest bucket's peak fit; otherwise `partial` (or `streamed` when no
    block fits) with the text encoder off the GPU between prompts, a caption's text layers as many as fit,
    and VAE tiling where the largest bucket's decode alone would not fit. Raises PlanDoesNotFit when the
    smallest useful placement (every block streamed) cannot hold a bucket's activations.

    `fp8`: the worker wants FP8 weights for fast jobs and its card can run them (else `fp8_why_not`
    says why not). The placement is chosen for bf16 either way; under `full` FP8 is kept only where
    its copy fits on the GPU beside the bf16 weights, elsewhere its copy is pinned on the host.
    """
    if fp8 and not footprint.fp8_block_bytes:
        fp8, fp8_why_not = False, "the model's FP8 footprint is unknown"
    fp8_why_not = "" if fp8 else (fp8_why_not or "off")
    if not buckets:
        buckets = ((640, 4),)
    fp = footprint
    usable = usable_bytes(budget_bytes)
    largest = max(buckets, key=lambda b: fp.tokens(*b))
    peak = max(
        max(fp.denoise_activation_bytes(*b), fp.decode_activation_bytes(*b), fp.caption_activation_bytes())
        for b in buckets
    )
    if usable >= fp.total_bytes + peak:
        if fp8 and usable < fp.total_bytes + fp.fp8_copy_bytes + peak:
            fp8, fp8_why_not = False, (
                f"the FP8 copy ({fp.fp8_copy_bytes / GIB:.1f} GiB) does not fit on the GPU beside the bf16 weights"
            )
        return MemoryPlan("full", budget_bytes, fp, largest, device_type, source, fp8=fp8, fp8_why_not=fp8_why_not)

    notes = []
    decode_room = usable - fp.transformer_rest_bytes - fp.vae_bytes
    vae_tiling = any(fp.decode_activation_bytes(*b) > decode_room for b in buckets)
    if vae_tiling:
        notes.append("VAE decodes in tiles: the largest bucket's decode would not fit untiled")
    # Captions (worker/accel/captioner.py, batch-invariant): up to 8 images prefilled one by one with the
    # vision tower on, each copied into the fixed-batch KV buffers right after its prefill (the buffers
    # and one row's own KV), then decoded together with the vision tower and the input embedding off
    # the GPU (the buffers only). Until 2026-12-02 all 8 rows' KV was held until the decode and counted
    # twice there: 2 text layers fewer while decoding (14 GiB: 19 of 28 instead of 21).
    caption_base = usable - fp.transformer_rest_bytes - fp.vae_bytes - STREAM_BUFFERS * fp.text_layer_bytes
    row_kv = fp.caption_kv_bytes() // CAPTION_DECODE_BATCH
    caption_room = caption_base - fp.text_rest_bytes - fp.caption_activation_bytes() - fp.caption_kv_bytes() - row_kv
    caption_layers = max(0, min(fp.text_layers, caption_room // fp.text_layer_bytes))
    dropped = fp.text_prefill_only_bytes if caption_layers < fp.text_layers else 0  # caption_decode_drops_prefill
    caption_decode_room = caption_base - (fp.text_rest_bytes - dropped) - fp.caption_kv_bytes()
    decode_layers = max(0, min(fp.text_layers, caption_decode_room // fp.text_layer_bytes))
    if decode_layers < fp.text_layers:
        notes.append(
            f"caption decoding streams {fp.text_layers - decode_layers} text-encoder layers per token: "
            "auto-captioned jobs are slower (8 captions share each token's copies)"
        )
    probe = MemoryPlan("partial", budget_bytes, fp, largest, device_type, source, vae_tiling, int(caption_layers),
                       fp8=fp8, caption_decode_text_layers=int(decode_layers))
    for bucket in buckets:
        probe.resident_blocks_for(*bucket)  # raises PlanDoesNotFit for a bucket beyond the budget
    if probe.resident_blocks == 0:
        name = "streamed"
    elif probe.resident_blocks < fp.transformer_blocks:
        name = "partial"
    else:
        name = "transformer-resident"  # only the text encoder leaves the GPU between prompts
    return MemoryPlan(name, budget_bytes, fp, largest, device_type, source, vae_tiling, int(caption_layers), tuple(notes),
                      fp8=fp8, fp8_why_not=fp8_why_not, caption_decode_text_layers=int(decode_layers))


def budget_from(memory_gib: float, device_type: str, card_free_bytes: int | None) -> tuple[int | None, str]:
    """(budget bytes, source): `LAYERQ_GPU_MEMORY_GIB` when set (> 0), else the card's free memory at
    start; None on a CPU without the variable (the plan is then `full`: host memory is the device)."""
    if memory_gib and memory_gib > 0:
        return int(memory_gib * GIB), "LAYERQ_GPU_MEMORY_GIB"
    if device_type == "cuda" and card_free_bytes is not None:
        return int(card_free_bytes), "card"
    return None, "host"


def plan_for(
    footprint: ModelFootprint, *, memory_gib: float, device_type: str, card_free_bytes: int | None,
    buckets: tuple[tuple[int, int], ...], fp8: bool = False, fp8_why_not: str = "",
) -> MemoryPlan:
    """The plan a worker starts with; see `budget_from` and `choose_plan`."""
    budget, source = budget_from(memory_gib, device_type, card_free_bytes)
    if budget is None:  # host memory is the device: the FP8 copy sits beside the weights
        largest = max(buckets or ((640, 4),), key=lambda b: footprint.tokens(*b))
        return MemoryPlan("full", 0, footprint, largest, device_type, source, fp8=fp8,
                          fp8_why_not="" if fp8 else (fp8_why_not or "off"))
    return choose_plan(budget, footprint, buckets, device_type=device_type, source=source, fp8=fp8,
                       fp8_why_not=fp8_why_not)
