"""Batch-invariant greedy captions: our own decode loop over the text encoder's own layers.

Why not `generate`: with a static cache and torch.compile ("reduce-overhead"), the IDENTICAL call repeated
in one process gave other tokens in bf16 on an H200 (bench/GPU_NOTES.md, runs 12-13), and batch shapes
change the kernels. Here every image's arithmetic depends on nothing but the image:

1. prefill: one image at a time at batch 1, no padding, the model's own eager forward. Its shapes depend
   only on the image's token count. Out come the row's KV, its last-token logits and its M-RoPE delta.
2. the row's KV is copied into static per-layer buffers [batch, kv_heads, length, head_dim] at [0, n),
   right after its prefill (`load`), so only one row's own KV exists at a time.
3. decode: all rows together in a FIXED batch (dummy rows pad a short one) against a FIXED key length;
   each row writes its new K/V at its own position and attends to keys <= that position (a boolean mask:
   masked keys add exact zeros, so neither the dummy rows nor stale buffer contents reach a row). Every
   GEMM, norm and attention kernel has the same shape in every call, and rows never mix.
4. the generation config's logits processing (repetition penalty; greedy, or sampling with top_k=1,
   which is greedy) on the GPU with a per-row "seen tokens" mask, argmax, end tokens end a row.
5. on CUDA one decode step is captured in a `torch.cuda.CUDAGraph` (eager kernels, no torch.compile)
   and replayed per token, so every call runs the same recorded kernels; elsewhere, or when the layers'
   weights move (memory plans stream them: worker/block_streaming.py), the same step runs eagerly. A
   memory plan with room for every text layer in its caption phase keeps them still for the batch:
   the graph is captured then (the captioner makes a new decoder per batch under a plan).

The layers are the text encoder's own `Qwen2_5_VLDecoderLayer` modules (called as modules, so hooks
fire), fed a small cache object whose `update` writes each row at its own position.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

# How often the host checks whether every row has finished (a device->host sync each time).
FINISH_CHECK_EVERY = 16
# Capture attempts before a decoder settles for eager steps. A capture can fail for a passing reason
# (another thread's CUDA call in "global" mode, memory), and eager decoding costs ~2.5x per token.
CAPTURE_ATTEMPTS = 3
# Generation-config fields whose processing is not implemented here, with their "off" values.
_UNSUPPORTED = {
    "no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,),
    "min_length": (None, 0), "min_new_tokens": (None, 0), "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "sequence_bias": (None,), "encoder_repetition_penalty": (None, 1.0), "num_beams": (None, 1),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
}


class Unsupported(ValueError):
    """The text encoder's generation config asks for something this decoder does not do."""


@dataclass(frozen=True)
class Selection:
    """How the next token is chosen, read from a `GenerationConfig`."""

    repetition_penalty: float
    eos_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def from_config(cls, gc) -> "Selection":
        for name, off in _UNSUPPORTED.items():
            if getattr(gc, name, None) not in off:
                raise Unsupported(f"generation_config.{name}={getattr(gc, name)!r}")
        # Sampling with top_k=1 keeps one candidate: the argmax (temperature and top_p change nothing).
        # Exact ties aside: there HF samples among the tied tokens, argmax takes the lowest id.
        if getattr(gc, "do_sample", False) and getattr(gc, "top_k", None) != 1:
            raise Unsupported(f"sampling with top_k={gc.top_k!r} is not greedy")
        eos = gc.eos_token_id
        eos_ids = () if eos is None else tuple([eos] if isinstance(eos, int) else eos)
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
        return cls(float(gc.repetition_penalty or 1.0), eos_ids, int(pad))

    def next_tokens(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """Argmax of `logits` (float32, [rows, vocab]) after the repetition penalty on `seen` tokens;
        the same elementwise arithmetic as transformers' RepetitionPenaltyLogitsProcessor."""
        if self.repetition_penalty != 1.0:
            p = self.repetition_penalty
            logits = torch.where(seen, torch.where(logits < 0, logits * p, logits / p), logits)
        return logits.argmax(dim=-1)


@dataclass
class Prefilled:
    """One image after its batch-1 prefill."""

    keys: list[torch.Tensor]  # per layer [kv_heads, n, head_dim]
    values: list[torch.Tensor]
    length: int  # n: prompt tokens
    rope_delta: int  # text position = cache index + rope_delta (all three M-RoPE components)
    first_token: int
    prompt_ids: torch.Tensor  # [n] (for the repetition penalty's seen set)


def text_parts(text_encoder):
    """(language model, lm_head) of a Qwen2.5-VL `...ForConditionalGeneration` (transformers 5 layout)."""
    model = text_encoder.model
    return model.language_model, text_encoder.lm_head


@torch.inference_mode()
def prefill(text_encoder, inputs, selection: Selection) -> Prefilled:
    """Batch-1 forward of one prompt (processor output for ONE image, no padding)."""
    if inputs["input_ids"].shape[0] != 1:
        raise ValueError("prefill takes one prompt")
    out = text_encoder(**inputs, use_cache=True, logits_to_keep=1)
    # The model computes the M-RoPE delta of this prompt in this forward (cache empty) and keeps it.
    delta = int(text_encoder.model.rope_deltas.reshape(-1)[0])
    ids = inputs["input_ids"][0]
    logits = out.logits[:, -1, :].float()
    seen = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    seen[0, ids] = True
    first = int(selection.next_tokens(logits, seen)[0])
    layers = out.cache.layers
    return Prefilled(
        keys=[layer.keys[0] for layer in layers], values=[layer.values[0] for layer in layers],
        length=int(ids.shape[0]), rope_delta=delta, first_token=first, prompt_ids=ids,
    )


class _RowCache:
    """What a decoder layer's attention needs from a cache: `update` writes each row's new K/V at the
    row's own position in the static buffers and returns the whole buffers (the mask hides the rest)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], rows: torch.Tensor, pos: torch.Tensor):
        self.keys, self.values, self.rows, self.pos = keys, values, rows, pos

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[self.rows, :, self.pos] = key_states[:, :, 0]
        v[self.rows, :, self.pos] = value_states[:, :, 0]
        return k, v


def layers_are_resident(layers: nn.ModuleList) -> bool:
    """True when the decoder layers are the model's own modules with fixed weights (no streaming
    wrapper, no hooks): only then may a CUDA graph keep their weights' addresses."""
    for layer in layers:
        layer = _held(layer)
        if layer is None or not type(layer).__name__.endswith("DecoderLayer"):
            return False
        if any(_moving_hooks(m) for m in layer.modules()):
            return False
    return True


def _held(layer: nn.Module) -> nn.Module | None:
    """The layer itself; for a memory plan's streaming wrapper (worker/block_streaming.py), the wrapped
    layer while every layer of its stack stays on the GPU (the wrapper then moves nothing: the caption
    phase of a plan with room for all text layers), else None."""
    stack = getattr(layer, "_stack", None)
    if stack is None:
        return layer
    if len(stack.resident) != len(stack.groups) or not all(g.on_device for g in stack.groups):
        return None
    return layer.block


def _moving_hooks(module: nn.Module) -> list:
    """The module's forward hooks, less transformers' output-capturing ones: its first call with
    `output_hidden_states=True` (the pipeline's `encode_prompt`) leaves one on every decoder layer and
    attention for good. They only record outputs while a capture is on and never move weights; counting
    them sent every real worker's captions down the eager path (2.5x slower per token)."""
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
    return [h for h in hooks if not getattr(h, "__module__", "").startswith("transformers.utils.output_capturing")]


class FixedBatchDecoder:
    """Greedy decoding of up to `batch` prefilled rows at a fixed batch and key length (see module doc)."""

    def __init__(self, text_encoder, selection: Selection, batch: int = 8, length: int = 2048,
                 use_graph: bool | None = None, device: torch.device | None = None):
        self.te, self.selection, self.batch, self.length = text_encoder, selection, batch, length
        self.lm, self.lm_head = text_parts(text_encoder)
        cfg = text_encoder.config.get_text_config()
        self.vocab = cfg.vocab_size
        param = next(self.lm.embed_tokens.parameters())
        # `device`: where the model computes. Under a memory plan the embedding table may be on the
        # host when the decoder is made, so it does not tell.
        self.device, self.dtype = (device if device is not None else param.device), param.dtype
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        shape = (batch, cfg.num_key_value_heads, length, head_dim)
        dev = self.device
        with torch.inference_mode():
            # Zeros: masked keys must hold finite numbers (0 x NaN would be NaN).
            self.k = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(cfg.num_hidden_layers)]
            self.v = [torch.zeros(shape, dtype=self.dtype, device=dev) for _ in range(cfg.num_hidden_layers)]
            self.tok = torch.zeros(batch, dtype=torch.long, device=dev)
            self.pos = torch.zeros(batch, dtype=torch.long, device=dev)
            self.delta = torch.zeros(batch, dtype=torch.long, device=dev)
            self.seen = torch.zeros(batch, self.vocab, dtype=torch.bool, device=dev)
            self.finished = torch.ones(batch, dtype=torch.bool, device=dev)
            self.rows = torch.arange(batch, device=dev)
            self.key_index = torch.arange(length, device=dev)
            self.logits = torch.zeros(batch, self.vocab, dtype=torch.float32, device=dev)  # last step's, for traces
            self.eos = torch.tensor(selection.eos_ids or [-1], dtype=torch.long, device=dev)
        self.cache = _RowCache(self.k, self.v, self.rows, self.pos)
        if use_graph is None:
            use_graph = dev.type == "cuda"
        self.use_graph = use_graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_s = 0.0
        self.capture_error: str | None = None
        self.capture_attempts = 0
        self.steps = 0

    # --- one token for every row -----------------------------------------------------------------
    def _step(self) -> None:
        """Feed `tok` at `pos`, choose the next token into `tok`, advance `pos` (all in place)."""
        embed = self.lm.embed_tokens
        if embed.weight.device != self.device:
            # A memory plan left the table on the host while captions decode (worker/block_streaming.py):
            # look the batch's tokens up there (a row gather: the same bits) and copy 8 rows over.
            # Reading the tokens is a device->host sync per step; never inside a graph (the layers
            # stream then, so the step runs eagerly).
            hidden = embed(self.tok[:, None].to(embed.weight.device)).to(self.device)
        else:
            hidden = embed(self.tok[:, None])
        positions = (self.pos + self.delta)[None, :, None].expand(3, -1, -1)
        cos_sin = self.lm.rotary_emb(hidden, positions)
        mask = (self.key_index[None, :] <= self.pos[:, None])[:, None, None, :]
        for layer in self.lm.layers:
            hidden = layer(hidden, attention_mask=mask, position_ids=None, cache=self.cache, use_cache=True,
                           position_embeddings=cos_sin)
        logits = self.lm_head(self.lm.norm(hidden))[:, -1, :].float()
        self.logits.copy_(logits)
        nxt = self.selection.next_tokens(logits, self.seen)
        nxt = torch.where(self.finished, torch.full_like(nxt, self.selection.pad_id), nxt)
        # No host values inside a captured step: compare against the end ids on the device, and mark
        # seen tokens with a scatter of a constant.
        self.finished |= (nxt[:, None] == self.eos[None, :]).any(-1)
        self.seen.scatter_(1, nxt[:, None], True)
        self.tok.copy_(nxt)
        self.pos.add_(1)

    def _run_step(self) -> None:
        # The embedding table on the host (a memory plan's caption decode) means a host lookup per step.
        on_host = self.lm.embed_tokens.weight.device != self.device
        if not self.use_graph or on_host or not layers_are_resident(self.lm.layers):
            self._step()
            return
        if self.graph is None:
            self.capture_attempts += 1
            try:
                self._capture()
            except RuntimeError as exc:  # e.g. a layer that syncs with the host: decode eagerly instead
                self.capture_error = str(exc)
                if self.capture_attempts >= CAPTURE_ATTEMPTS:
                    self.use_graph = False
                log.warning("decode step not captured in a CUDA graph (attempt %d of %d: %s); this step "
                            "runs eagerly", self.capture_attempts, CAPTURE_ATTEMPTS, exc)
                self._step()
                return
        self.graph.replay()

    def _capture(self) -> None:
        """Record `_step` once. The warm-up steps run on scratch state (restored afterwards), as
        CUDA-graph capture wants the kernels' lazy initialisation done first."""
        import time

        started = time.perf_counter()
        state = (self.tok, self.pos, self.seen, self.finished)
        saved = [t.clone() for t in state]
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of the worker's other threads (heartbeats, uploads) during the
            # capture neither break it nor get caught in it.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._step()
        finally:
            # The warm-up steps advanced the state; their K/V writes lie at positions the real steps
            # write again before reading them.
            for t, s in zip(state, saved):
                t.copy_(s)
            torch.cuda.synchronize(self.device)
        self.graph = graph
        self.capture_s = time.perf_counter() - started

    # --- a batch ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def begin(self) -> None:
        """Empty every row (all finished: rows not loaded stay dummies) before `load`ing a batch."""
        self.seen.zero_()
        self.finished.fill_(True)
        self.pos.zero_()
        self.delta.zero_()
        self.tok.fill_(self.selection.pad_id)

    @torch.inference_mode()
    def load(self, slot: int, row: Prefilled, max_new_tokens: int) -> None:
        """Copy one prefilled row into row `slot` of the buffers. Afterwards the row's own KV is not
        needed: a caller that drops the `Prefilled` right away holds one row's KV at a time, not the
        batch's (a memory plan counts on that: worker/memory_plan.py)."""
        if not 0 <= slot < self.batch:
            raise ValueError(f"slot {slot} outside the batch of {self.batch}")
        if row.length + max_new_tokens > self.length:
            raise ValueError(f"prompt of {row.length} tokens + {max_new_tokens} does not fit {self.length}")
        for layer, (k, v) in enumerate(zip(row.keys, row.values)):
            self.k[layer][slot, :, : row.length].copy_(k)
            self.v[layer][slot, :, : row.length].copy_(v)
        self.seen[slot, row.prompt_ids] = True
        self.seen[slot, row.first_token] = True
        self.tok[slot] = row.first_token
        self.pos[slot] = row.length
        self.delta[slot] = row.rope_delta
        self.finished[slot] = row.first_token in self.selection.eos_ids  # dummy rows stay finished

    @torch.inference_mode()
    def decode(self, rows: list[Prefilled], max_new_tokens: int, trace_row: int | None = None) -> list[list[int]]:
        """New tokens per row (each ends at its first end token, inclusive): `begin`, `load` each row,
        `run`. With `trace_row`, the raw logits of that row at every decode step are kept in `self.trace`
        (benchmark diagnosis)."""
        if not 0 < len(rows) <= self.batch:  # before `begin` touches the state
            raise ValueError(f"1..{self.batch} rows, got {len(rows)}")
        self.begin()
        for i, r in enumerate(rows):
            self.load(i, r, max_new_tokens)
        return self.run(len(rows), max_new_tokens, trace_row)

    @torch.inference_mode()
    def run(self, n_rows: int, max_new_tokens: int, trace_row: int | None = None) -> list[list[int]]:
        """Decode the rows loaded into slots 0..n_rows-1 since `begin`."""
        if not 0 < n_rows <= self.batch:
            raise ValueError(f"1..{self.batch} rows, got {n_rows}")
        eos = set(self.selection.eos_ids)
        out = torch.empty(self.batch, max_new_tokens, dtype=torch.long, device=self.device)
        out[:, 0] = self.tok
        done = 1
        self.trace: list[torch.Tensor] = []
        while done < max_new_tokens:
            self._run_step()
            out[:, done] = self.tok
            if trace_row is not None:
                self.trace.append(self.logits[trace_row].clone())
            done += 1
            self.steps += 1
            if done % FINISH_CHECK_EVERY == 0 and bool(self.finished[:n_rows].all()):
                break
        result = []
        for row in out[:n_rows, :done].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            result.append(row[:end])
        return result


def fixed_length(prompt_len: int, max_new_tokens: int, base: int) -> int:
    """Key length a row decodes at: `base` when it fits, else its own need rounded up to 1024. A
    function of the row alone, so the row's attention shape never depends on its batch-mates."""
    need = prompt_len + max_new_tokens
    return base if need <= base else int(math.ceil(need / 1024) * 1024)
