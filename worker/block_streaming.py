"""Applying a `MemoryPlan`: weights in pinned host memory, copied to the GPU by phase and by block.

Why our own streaming and not diffusers' `apply_group_offloading`: its block-level mode offloads every
block of a ModuleList (it cannot keep a chosen part resident, and partial residency is what makes a
48 GB card nearly as fast as an 80 GB one), and its hooks run inside the module's `_call_impl`, which
the regional compile (`worker/accel/transformer.py`, `block.compile()`) traces. Here each repeated
block is wrapped in a `_StreamedBlock` whose eager `forward` fetches the weights and then calls the
block, compiled or not: compile and streaming compose, and all blocks still share one compiled graph
(a parameter's storage is swapped with `.data`; its shape, dtype and device at call time are the same,
which is all dynamo guards on).

Weights never change at inference, so the pinned host copy is the master: "offloading" a block is
pointing its parameters back at the host copy (the GPU copy is freed), "onloading" is one
non-blocking host→device copy on a side stream, recorded with an event the compute stream waits on.

Phases of one job (the pipeline's own call order), switched by hooks:

  caption   `text_encoder.generate`, or the batch-invariant captioner's `captioning()` block around its
            prefills and decode (worker/accel/captioner.py): the transformer's blocks are dropped, the
            text encoder's other weights and `plan.caption_text_layers` of its layers come on; the
            rest stream per token. While the invariant captioner decodes (`decode_captions()`) on a
            plan without room for every text layer, what its decode never reads leaves the GPU: the
            vision tower and, where it is not tied to the output head, the input embedding table
            (the decoder looks its 8 tokens per step up on the host); `plan.decode_text_layers`
            layers are resident in the room they leave.
  prompt    `text_encoder(...)` (prompt encoding, then the input image's VAE encoding): transformer
            blocks beyond `plan.prompt_blocks_for(job)` are dropped, the text encoder's other weights
            come on; its layers stream past the transformer's resident blocks (after a caption, the
            layers on the GPU stay).
  denoise   `transformer(...)`: the text encoder is dropped; `plan.resident_blocks_for(job)` blocks are
            on, the others stream, each prefetched while the block before it computes.
  decode    `vae.decode`: blocks beyond `plan.decode_blocks_for(job)` are dropped to make room.

FP8 for fast jobs (`enable_fp8`): each block also gets a second weight group that shares the block's
pinned biases and norms with the bf16 group but holds the FP8 copies of its linears instead of their
bf16 weights. A fast job's denoising phase switches the transformer's stack to those groups (dropping
whatever the other mode had on the GPU first), so an exact job moves and computes exactly what it did
before FP8 existed.

On a CPU the same code runs with plain copies (no streams): that is how the tests check that a
streamed job gives the full-residency job's output exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any

import torch
from torch import nn

from worker.memory_plan import MemoryPlan, resident_indices

log = logging.getLogger(__name__)


def transformer_blocks(transformer: Any) -> nn.ModuleList:
    return transformer.transformer_blocks


def text_layers(text_encoder: Any) -> nn.ModuleList:
    """The decoder layers of the Qwen2.5-VL text encoder (transformers 5 nests them under `model`)."""
    model = getattr(text_encoder, "model", text_encoder)
    lm = getattr(model, "language_model", model)
    return lm.layers


class Copier:
    """Host→device copies on a side stream (CUDA) or plain copies (CPU, for tests)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.bytes_copied = 0

    def copy(self, host: torch.Tensor) -> torch.Tensor:
        self.bytes_copied += host.numel() * host.element_size()
        # Outside inference mode: `param.data = t` refuses an inference tensor for a normal parameter.
        with torch.inference_mode(False), torch.no_grad():
            if self.stream is None:
                return host.to(self.device, copy=True)
            with torch.cuda.stream(self.stream):
                return host.to(self.device, non_blocking=True)

    def record(self) -> Any:
        if self.stream is None:
            return None
        event = torch.cuda.Event()
        event.record(self.stream)
        return event


class WeightGroup:
    """Tensors (parameters and buffers) of some modules, pinned on the host, on the device on demand."""

    def __init__(self, modules: list[nn.Module], copier: Copier, pin: bool, skip: frozenset[int] = frozenset()) -> None:
        self.copier = copier
        self.tensors: list[torch.Tensor] = []
        seen: set[int] = set(skip)  # `skip`: ids of tensors another group holds (FP8 copies)
        for module in modules:
            for t in [*module.parameters(), *module.buffers()]:
                if id(t) not in seen:
                    seen.add(id(t))
                    self.tensors.append(t)
        with torch.inference_mode(False), torch.no_grad():
            if pin:
                self._pin_into_slab()
            else:
                for t in self.tensors:
                    if t.device.type != "cpu":
                        t.data = t.data.to("cpu")
        self.host = [t.data for t in self.tensors]
        self._init_state()

    def _init_state(self) -> None:
        self.nbytes = sum(h.numel() * h.element_size() for h in self.host)
        self.on_device = False
        self._event: Any = None
        self._waited = True

    @classmethod
    def derived(cls, base: "WeightGroup", without: set[int], extra: list[torch.Tensor], pin: bool) -> "WeightGroup":
        """A group with `base`'s tensors except those whose id is in `without`, plus `extra` (moved to
        their own pinned buffer). The shared tensors keep `base`'s host copy: nothing is pinned twice.
        `base` must be dropped, and only one of the two may be on the device at a time."""
        if base.on_device:
            raise RuntimeError("derive a weight group from a dropped one")
        group = cls.__new__(cls)
        group.copier = base.copier
        kept = [(t, h) for t, h in zip(base.tensors, base.host) if id(t) not in without]
        group.tensors = list(extra)
        with torch.inference_mode(False), torch.no_grad():
            if pin:
                group._pin_into_slab()
            else:
                for t in extra:
                    t.data = t.data.to("cpu")
        group.tensors = [t for t, _ in kept] + list(extra)
        group.host = [h for _, h in kept] + [t.data for t in extra]
        group._init_state()
        return group

    def _pin_into_slab(self) -> None:
        """Move the tensors into one page-locked host buffer of exactly their size.

        `pin_memory()` goes through PyTorch's caching host allocator, which rounds every allocation
        up to a power of two: ~1.3-1.7x the model's bytes of locked host memory. One plain buffer per
        group, registered with `cudaHostRegister`, locks exactly what the weights need."""
        align = 256
        offsets, total = [], 0
        for t in self.tensors:
            offsets.append(total)
            total += -(-t.numel() * t.element_size() // align) * align
        slab = torch.empty(max(total, 1), dtype=torch.uint8)
        cudart = torch.cuda.cudart()
        if cudart.cudaHostRegister(slab.data_ptr(), slab.numel(), 0) != cudart.cudaError.success:
            slab = slab.pin_memory()  # registration refused: the allocator's pinned memory, rounded
        for t, offset in zip(self.tensors, offsets):
            n = t.numel() * t.element_size()
            view = slab[offset : offset + n].view(t.dtype).view(t.shape)
            view.copy_(t.data)
            t.data = view
        self.slab = slab  # keeps the registered memory alive for the process

    def load(self) -> None:
        """Start copying to the device (non-blocking); `ready()` makes the compute stream wait for it."""
        if self.on_device:
            return
        with torch.inference_mode(False), torch.no_grad():
            for t, h in zip(self.tensors, self.host):
                t.data = self.copier.copy(h)
        self._event = self.copier.record()
        self._waited = False
        self.on_device = True

    def ready(self) -> None:
        self.load()
        if self._waited:
            return
        if self._event is not None:
            stream = torch.cuda.current_stream(self.copier.device)
            stream.wait_event(self._event)
            for t in self.tensors:
                # Freed later (when dropped), the copy must not be reused before the compute using it ends.
                t.data.record_stream(stream)
        self._waited = True

    def drop(self) -> None:
        if not self.on_device:
            return
        with torch.inference_mode(False), torch.no_grad():
            for t, h in zip(self.tensors, self.host):
                t.data = h
        self.on_device = False
        self._event = None
        self._waited = True


class _StreamedBlock(nn.Module):
    """Wraps one repeated block: fetches its weights (and prefetches the next streamed block's) first."""

    def __init__(self, block: nn.Module, stack: "BlockStack", index: int) -> None:
        super().__init__()
        self.block = block
        object.__setattr__(self, "_stack", stack)  # not a submodule: no cycle in the module tree
        object.__setattr__(self, "_index", index)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._stack.before(self._index)
        try:
            return self.block(*args, **kwargs)
        finally:
            self._stack.after(self._index)

    def __getattr__(self, name: str) -> Any:
        # transformers' decoder loop reads layer attributes (e.g. `attention_type`) off the layer.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["block"], name)


class BlockStack:
    """A ModuleList of equal blocks, some resident on the device and the others streamed."""

    def __init__(self, blocks: nn.ModuleList, copier: Copier, pin: bool, skip: frozenset[int] = frozenset()) -> None:
        self.groups = [WeightGroup([b], copier, pin, skip) for b in blocks]
        for i, block in enumerate(list(blocks)):
            blocks[i] = _StreamedBlock(block, self, i)
        self.resident: set[int] = set()
        self._next_streamed: list[int | None] = [None] * len(self.groups)
        # Weight modes: "bf16" (the model as loaded) and, once `enable_fp8` ran, "fp8".
        self.modes: dict[str, list[WeightGroup]] = {"bf16": self.groups}
        self.mode = "bf16"

    def set_mode(self, mode: str) -> None:
        """Use the weight groups of `mode` from now on; everything of the other mode is dropped first,
        so the two never share the GPU (the next `set_resident` loads what the new mode keeps)."""
        if mode == self.mode:
            return
        self.drop_all()
        self.mode, self.groups = mode, self.modes[mode]
        self.set_resident(0)

    def __len__(self) -> int:
        return len(self.groups)

    def set_resident(self, count: int) -> None:
        """Keep `count` blocks on the device (spread evenly); drop the others."""
        target = set(resident_indices(len(self.groups), count))
        for i, group in enumerate(self.groups):
            if i not in target:
                group.drop()
        for i in sorted(target):
            self.groups[i].load()
        self.resident = target
        streamed = [i for i in range(len(self.groups)) if i not in target]
        # The next streamed block after block i, wrapping to the first one (prefetched for the next call).
        self._next_streamed = [
            next((j for j in streamed if j > i), streamed[0] if streamed else None) for i in range(len(self.groups))
        ]

    def shrink_to(self, count: int) -> None:
        """Drop resident blocks (the last ones) until `count` remain, loading none: the next
        `set_resident` brings back what it needs."""
        for i in sorted(self.resident, reverse=True)[: max(0, len(self.resident) - count)]:
            self.resident.discard(i)
        for i, group in enumerate(self.groups):
            if i not in self.resident:
                group.drop()  # also a streamed block prefetched for the next call

    def drop_all(self) -> None:
        self.set_resident(0)
        for group in self.groups:
            group.drop()

    def before(self, index: int) -> None:
        self.groups[index].ready()
        nxt = self._next_streamed[index]
        if nxt is not None and nxt != index:
            self.groups[nxt].load()

    def after(self, index: int) -> None:
        if index not in self.resident:
            self.groups[index].drop()

    @property
    def resident_bytes(self) -> int:
        return sum(self.groups[i].nbytes for i in self.resident)


class PlacedPipeline:
    """A `QwenImageLayeredPipeline` arranged as `plan` says; see the module doc for the phases."""

    def __init__(self, pipe: Any, plan: MemoryPlan, device: torch.device) -> None:
        self.pipe, self.plan, self.device = pipe, plan, device
        self.copier = Copier(device)
        pin = device.type == "cuda"
        transformer, text_encoder = pipe.transformer, pipe.text_encoder
        # Weights that stay on the device: the VAE and the transformer's modules outside its blocks.
        blocks = transformer_blocks(transformer)
        # FP8 copies made before this placement (a benchmark converts the resident model first) are
        # not part of the bf16 groups; `enable_fp8` gives them their own.
        from worker.accel.fp8 import converted, fp8_tensors

        made = frozenset(id(t) for t in fp8_tensors(converted(transformer)))
        self.transformer_stack = BlockStack(blocks, self.copier, pin, made)
        for name, child in transformer.named_children():
            if child is not blocks:
                child.to(device)
        for name, buf in list(transformer.named_buffers(recurse=False)):
            transformer._buffers[name] = buf.to(device)
        pipe.vae.to(device)
        layers = text_layers(text_encoder)
        layer_ids = {id(t) for layer in layers for t in [*layer.parameters(), *layer.buffers()]}
        self.text_stack = BlockStack(layers, self.copier, pin)
        # What only a prefill reads (the vision tower; the input embedding unless tied to the output
        # head): its own group, so the caption decode can leave it on the host.
        prefill_only = _prefill_only_modules(text_encoder)
        prefill_ids = {id(m) for m in prefill_only}
        rest = [m for m in text_encoder.modules()
                if m is not layers and not isinstance(m, _StreamedBlock) and id(m) not in prefill_ids]
        self.text_prefill = WeightGroup([_OwnTensors(m, layer_ids) for m in prefill_only], self.copier, pin)
        skip = layer_ids | {id(t) for t in self.text_prefill.tensors}
        self.text_rest = WeightGroup([_OwnTensors(m, skip) for m in rest], self.copier, pin)
        if plan.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        self.phase = "idle"
        self.captions_entered = 0
        """Times `captioning()` was entered (tests, benchmarks)."""
        self.job: tuple[int, int] = plan.sized_for
        self.fp8_job = False
        """The current job's denoising uses the FP8 groups (a fast job on a plan with FP8)."""
        self._pin = pin
        self._install_hooks()
        log.info(
            "memory plan %s: %d GiB pinned on the host, %s", plan.name, plan.pinned_host_bytes // 2**30, plan.describe()
        )

    def enable_fp8(self) -> list[nn.Module]:
        """Make the FP8 copy of every transformer block (worker/accel/fp8.py), one block at a time on
        the device (its bf16 weights copied in, quantised, the FP8 tensors pinned on the host), and the
        weight groups fast jobs stream; returns the converted linears."""
        from worker.accel import fp8

        stack = self.transformer_stack
        stack.set_mode("bf16")
        stack.drop_all()
        groups, modules = [], []
        for i, wrapped in enumerate(transformer_blocks(self.pipe.transformer)):
            base = stack.modes["bf16"][i]
            converted = fp8.converted(wrapped.block)
            if not converted:  # quantised from the bf16 weights, on the device
                base.ready()
                converted = fp8.convert(wrapped.block)
                base.drop()
            replaced = {id(m.weight) for m in converted}
            groups.append(WeightGroup.derived(base, replaced, fp8.fp8_tensors(converted), self._pin))
            modules += converted
        stack.modes["fp8"] = groups
        log.info("FP8 copy for fast jobs: %.2f GiB pinned on the host (%s)",
                 sum(g.nbytes for g in groups) / 2**30, fp8.describe(modules))
        return modules

    def replan(self, plan: MemoryPlan) -> None:
        """Switch to another plan of the same model (a benchmark measures several budgets in one
        process): everything is dropped and the next job's phases load what the new plan keeps."""
        self.transformer_stack.drop_all()
        self.text_stack.drop_all()
        self.text_rest.drop()
        self.text_prefill.drop()
        self.plan, self.phase, self.job = plan, "idle", plan.sized_for
        if hasattr(self.pipe.vae, "enable_tiling"):
            self.pipe.vae.enable_tiling() if plan.vae_tiling else self.pipe.vae.disable_tiling()

    # --- per job ---------------------------------------------------------------------------------
    def begin_job(self, resolution: int, layers: int, fp8: bool = False) -> None:
        """Size the denoising phase for this job's bucket (raises PlanDoesNotFit if it cannot run);
        `fp8`: a fast job that denoises with the FP8 weights (where the plan has them)."""
        self.plan.resident_blocks_for(resolution, layers)
        self.job = (resolution, layers)
        self.fp8_job = fp8 and "fp8" in self.transformer_stack.modes

    # --- phases ----------------------------------------------------------------------------------
    def enter(self, phase: str) -> None:
        if phase == self.phase:
            return
        if phase == "caption":
            self.transformer_stack.drop_all()
            # Back from the caption decode (more layers resident, the vision tower and embedding off):
            # the extra layers leave before those come back, or both would be on the GPU at once.
            self.text_stack.shrink_to(self.plan.caption_text_layers)
            self.text_rest.ready()
            self.text_prefill.ready()
            self.text_stack.set_resident(self.plan.caption_text_layers)
        elif phase == "caption-decode":  # only from "caption" (see `decode_captions`)
            if self.plan.caption_decode_drops_prefill:
                self.text_prefill.drop()
            self.text_stack.set_resident(self.plan.decode_text_layers)
        elif phase == "prompt":
            if self.phase != "caption":
                # Counted in the blocks on the GPU now (the previous job's mode).
                held_fp8 = self.transformer_stack.mode == "fp8"
                self.transformer_stack.shrink_to(self.plan.prompt_blocks_for(*self.job, fp8=held_fp8))
                self.text_rest.ready()
                self.text_stack.set_resident(0)
        elif phase == "denoise":
            self.text_stack.drop_all()
            self.text_rest.drop()
            self.text_prefill.drop()
            self.transformer_stack.set_mode("fp8" if self.fp8_job else "bf16")
            self.transformer_stack.set_resident(self.plan.resident_blocks_for(*self.job, fp8=self.fp8_job))
        elif phase == "decode":
            keep = self.plan.decode_blocks_for(*self.job, fp8=self.transformer_stack.mode == "fp8")
            self.transformer_stack.shrink_to(keep)
        self.phase = phase

    @contextlib.contextmanager
    def captioning(self) -> Any:
        """The caption phase around a whole batch of captions (the batch-invariant captioner's prefills
        and decode). On leaving, the decode's arrangement is undone (vision tower and embedding back,
        `plan.caption_text_layers` resident): the state a caption by `generate` leaves, which the
        next job's prompt phase expects; its denoising phase brings the transformer's blocks back."""
        self.enter("caption")
        self.captions_entered += 1
        try:
            yield self
        finally:
            if self.phase == "caption-decode":
                self.enter("caption")

    def prefill_captions(self) -> None:
        """Inside `captioning()`, before a chunk's prefills: the prefill's arrangement (vision tower and
        embedding on), coming back from an earlier chunk's decode where there was one."""
        if self.phase not in ("caption", "caption-decode"):
            raise RuntimeError(f"prefill_captions() inside captioning(), not in phase {self.phase!r}")
        if self.phase == "caption-decode":
            self.enter("caption")

    def decode_captions(self) -> None:
        """Inside `captioning()`, after the prefills: the decode's arrangement (see the module doc)."""
        if self.phase != "caption":
            raise RuntimeError(f"decode_captions() inside captioning(), not in phase {self.phase!r}")
        self.enter("caption-decode")

    def _install_hooks(self) -> None:
        pipe = self.pipe
        te = pipe.text_encoder
        generate = te.generate

        @functools.wraps(generate)
        def generate_in_caption_phase(*args: Any, **kwargs: Any) -> Any:
            self.enter("caption")
            return generate(*args, **kwargs)

        te.generate = generate_in_caption_phase
        # How the batch-invariant captioner finds this placement (it calls the layers directly).
        te.layerq_placement = self

        def text_hook(module: Any, args: Any) -> None:
            if self.phase != "caption":
                self.enter("prompt")
            self.text_rest.ready()
            self.text_prefill.ready()

        te.register_forward_pre_hook(text_hook)
        pipe.transformer.register_forward_pre_hook(lambda module, args: self.enter("denoise"))
        decode = pipe.vae.decode

        @functools.wraps(decode)
        def decode_phase(*args: Any, **kwargs: Any) -> Any:
            self.enter("decode")
            return decode(*args, **kwargs)

        pipe.vae.decode = decode_phase


def _prefill_only_modules(text_encoder: Any) -> list[nn.Module]:
    """Modules of the Qwen2.5-VL text encoder that a decode step never reads: the vision tower and the
    input embedding table, the latter only where no other module shares its weight (a tied output
    head reads it every step)."""
    model = getattr(text_encoder, "model", text_encoder)
    out: list[nn.Module] = []
    visual = getattr(model, "visual", None)
    if isinstance(visual, nn.Module):
        out += list(visual.modules())
    lm = getattr(model, "language_model", model)
    embed = getattr(lm, "embed_tokens", None)
    if isinstance(embed, nn.Embedding):
        mine = {id(p) for p in embed.parameters()}
        others = {id(p) for m in text_encoder.modules() if m is not embed for p in m.parameters(recurse=False)}
        if not mine & others:
            out.append(embed)
    return out


class _OwnTensors(nn.Module):
    """A view of one module's own parameters and buffers (not its children's), minus `skip` ids, so the
    text encoder's non-layer weights can be grouped without the layers'."""

    def __init__(self, module: nn.Module, skip: set[int]) -> None:
        super().__init__()
        object.__setattr__(self, "_own", [
            t for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)] if id(t) not in skip
        ])

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter([t for t in self._own if isinstance(t, nn.Parameter)])

    def buffers(self, recurse: bool = True):  # type: ignore[override]
        return iter([t for t in self._own if not isinstance(t, nn.Parameter)])
