"""CFG-parallel: one job's prompt and negative-prompt transformer passes on two GPUs at once.

With classifier-free guidance every denoising step runs the transformer twice on the same latents,
once with the prompt ("cond") and once with the negative prompt ("uncond"); the two passes are
independent until the pipeline combines them. A pair of processes (ranks) each holding the model
splits them: rank 0 is the ordinary worker and runs the authors' pipeline call unchanged; rank 1 (the
*follower*, `worker.cfg_follower`) holds a second copy of the transformer and runs only the uncond
passes. The hook on rank 0 is a wrapper around `transformer.forward` for the duration of one call
(the same technique as `step_cache`): on the cond call of each step it sends the step's latents to
rank 1 and runs its own pass meanwhile; on the uncond call it returns rank 1's answer instead of
computing it. The text encoder, the VAE, the scheduler, the CFG combination and the step callback
stay on rank 0, so the arithmetic is the one-process path's, pass for pass.

What crosses between the ranks, per job: the negative-prompt embeddings and the call's constant
arguments (through the rendezvous store, a few KB to MB); per step: the latents and timestep to rank 1
and the uncond noise prediction back (about 1-2 MB each at the 640 bucket), through torch.distributed
point-to-point (NCCL on GPUs, NVLink multicast off; gloo on CPU). A job start goes through the store,
not the process group, because the follower waits for jobs for hours and a collective cannot wait
that long (NCCL's watchdog would abort it).

A lost or silent peer is not a job failure: `PeerLost` is raised, and the worker (see `connect`'s
`on_lost`) exits so its supervisor restarts the pair; the job's message is still unacknowledged and
the liveness reaper hands it back, as for any worker that died (docs/decisions.md).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

_STEP, _END = 1.0, 0.0
_JOB_KEY = "job/{}"
_POLL_S = 0.01  # how often an idle follower looks for a job in the store (cheap: one local TCP round trip)


class PeerLost(RuntimeError):
    """Raised when the other rank of a CFG-parallel pair died, or did not answer within the timeout."""


def pair_device(device: str, rank: int) -> str:
    """The device of `rank` in a pair whose processes both see the pair's two GPUs (cuda:0, cuda:1)."""
    if device == "auto":
        return f"cuda:{rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{rank}"
    return device


@dataclass
class CfgLink:
    """The two ranks' connection: a TCPStore (hosted by rank 0) plus a two-process process group."""

    rank: int
    store: Any
    group: Any
    device: torch.device
    timeout_s: float

    @classmethod
    def connect(cls, address: str, rank: int, device: str, *, timeout_s: float = 300.0,
                connect_timeout_s: float = 1800.0) -> CfgLink:
        """Rendezvous at `address` (host:port; rank 0 listens there). Blocks until both ranks are up:
        `connect_timeout_s` covers the slower rank's model load."""
        host, _, port = address.rpartition(":")
        dev = torch.device(device)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if backend == "nccl":
            # NVLink SHARP (multicast) must stay off on the lent GPU machines (bench/GPU_NOTES.md).
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
            torch.cuda.set_device(dev)
        store = dist.TCPStore(host, int(port), world_size=2, is_master=(rank == 0),
                              timeout=timedelta(seconds=connect_timeout_s), wait_for_workers=True)
        dist.init_process_group(backend, store=dist.PrefixStore("pg", store), rank=rank, world_size=2,
                                timeout=timedelta(seconds=timeout_s))
        log.info("CFG-parallel rank %d connected at %s (%s, %s)", rank, address, backend, dev)
        return cls(rank=rank, store=store, group=dist.group.WORLD, device=dev, timeout_s=timeout_s)

    # point-to-point with the timeout applied on the host (gloo honours it; NCCL's watchdog enforces
    # the process group's timeout on the GPU side)
    def send(self, tensor: torch.Tensor) -> None:
        self._run(lambda: dist.isend(tensor.contiguous(), dst=1 - self.rank), "send")

    def recv(self, like: torch.Tensor) -> torch.Tensor:
        self._run(lambda: dist.irecv(like, src=1 - self.rank), "recv")
        return like

    def _run(self, start: Callable[[], Any], what: str) -> None:
        try:
            work = start()
            if self.device.type == "cuda":
                # NCCL: make the current stream wait, not the host (a host wait per step would leave the
                # GPU idle while the next kernels are launched); the process group's watchdog enforces
                # `timeout_s` and takes the process down, which the pair's supervisor answers.
                work.wait()
            else:
                work.wait(timeout=timedelta(seconds=self.timeout_s))
        except Exception as exc:  # gloo: connection closed by the dead peer, or the timeout
            raise PeerLost(f"CFG-parallel {what} with rank {1 - self.rank} failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
        self.store = None


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _loads(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # tensors, dtypes, lists only


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


class CfgParallel:
    """Rank 0's side: `with cfg.active(pipe): pipe(...)` sends every uncond pass of that call to rank 1."""

    def __init__(self, link: CfgLink, on_lost: Callable[[PeerLost], None] | None = None):
        self.link = link
        self.on_lost = on_lost
        self.jobs = 0
        self.remote_calls = 0

    @contextlib.contextmanager
    def active(self, pipe: Any):
        """Within the block, the pipeline's uncond transformer passes run on rank 1.

        The negative embeddings are what the pipeline's own `encode_prompt` returned last before the
        loop (with CFG on it encodes the prompt, then the negative prompt), so rank 1 computes with
        exactly the tensors rank 0 would have used. A call without CFG (the last encoding is the
        prompt's own) passes through untouched."""
        transformer = pipe.transformer
        had_forward, had_encode = "forward" in transformer.__dict__, "encode_prompt" in pipe.__dict__
        original, encode = transformer.forward, pipe.encode_prompt
        # pending: the cond output whose uncond twin rank 1 owes us (its shape is the answer's shape)
        state: dict[str, Any] = {"encoded": None, "call": 0, "mode": None, "pending": None}

        def encode_prompt(*args: Any, **kwargs: Any):
            state["encoded"] = out = encode(*args, **kwargs)
            return out

        def forward(*args: Any, **kwargs: Any):
            if args:  # the pipeline passes keywords only; anything else is not ours to split
                return original(*args, **kwargs)
            call = state["call"]
            state["call"] = call + 1
            if state["mode"] is None:
                state["mode"] = self._start(state, kwargs, transformer)
            if state["mode"] in ("local", "ended"):  # no CFG, or a call past the last step
                return original(**kwargs)
            try:
                if call % 2 == 0:  # cond: hand rank 1 this step's input, then compute ours meanwhile
                    self._send_step(kwargs)
                    state["pending"] = state["answer_like"]
                    out = original(**kwargs)
                    state["pending"] = out[0]
                    return out
                neg = self.link.recv(torch.empty_like(state["pending"]))
                state["pending"] = None
                self.remote_calls += 1
                if _last_step(pipe.scheduler):
                    # Release rank 1 now, not after the VAE decode: its next wait would otherwise
                    # include the decode (and could pass the timeout on a slow or busy host).
                    self._end(state)
                    state["mode"] = "ended"
                return (neg,)
            except PeerLost as lost:
                state["mode"] = "lost"
                self._lost(lost)
                raise

        pipe.encode_prompt = encode_prompt
        transformer.forward = forward
        try:
            yield self
        finally:
            try:
                if state["mode"] == "remote":
                    try:
                        self._end(state)
                    except PeerLost as lost:
                        self._lost(lost)
                        raise
            finally:
                if had_forward:
                    transformer.forward = original
                else:
                    del transformer.forward
                if had_encode:
                    pipe.encode_prompt = encode
                else:
                    del pipe.encode_prompt

    def close(self) -> None:
        """Leave the pair on purpose: the next job slot says "no more jobs", so rank 1 exits cleanly
        (it tells this from rank 0 dying, whose store simply goes away)."""
        with contextlib.suppress(Exception):
            self.link.store.set(_JOB_KEY.format(self.jobs + 1), b"")
        self.link.close()

    # --- protocol (rank 0) -----------------------------------------------------------------------
    def _start(self, state: dict[str, Any], kwargs: dict[str, Any], transformer: Any) -> str:
        encoded = state["encoded"]
        if encoded is None or encoded[0] is kwargs.get("encoder_hidden_states"):
            return "local"  # no negative prompt was encoded: CFG is off for this call
        neg, neg_mask = encoded
        hidden, timestep = kwargs["hidden_states"], kwargs["timestep"]
        header = {
            "neg": _cpu(neg), "neg_mask": _cpu(neg_mask),
            "img_shapes": kwargs.get("img_shapes"), "guidance": _cpu(kwargs.get("guidance")),
            "attention_kwargs": kwargs.get("attention_kwargs"),
            "additional_t_cond": _cpu(kwargs.get("additional_t_cond")),
            "hidden_shape": tuple(hidden.shape), "hidden_dtype": hidden.dtype,
            "timestep_shape": tuple(timestep.shape), "timestep_dtype": timestep.dtype,
        }
        # What rank 1 answers: the transformer's output for these latents (used to drain an answer owed
        # when the cond pass itself failed, so the follower is never left blocked in a send).
        out_features = transformer.proj_out.out_features
        state["answer_like"] = torch.empty((*hidden.shape[:-1], out_features), dtype=hidden.dtype, device=hidden.device)
        state["ctrl_len"] = 1 + max(1, timestep.numel())
        self.jobs += 1
        try:
            self.link.store.set(_JOB_KEY.format(self.jobs), _dumps(header))
        except Exception as exc:
            lost = PeerLost(f"CFG-parallel store unreachable: {exc}")
            self._lost(lost)
            raise lost from exc
        return "remote"

    def _send_step(self, kwargs: dict[str, Any]) -> None:
        timestep = kwargs["timestep"].reshape(-1).to(torch.float64)  # bf16/fp32 → fp64 → back is exact
        # Built on the device (a fill kernel), not from a host list: that copy would sync the host every step.
        ctrl = torch.cat([timestep.new_full((1,), _STEP), timestep])
        self.link.send(ctrl)
        self.link.send(kwargs["hidden_states"])

    def _end(self, state: dict[str, Any]) -> None:
        """Tell rank 1 the call is over (finished, canceled or failed), after taking any answer it owes."""
        if state["pending"] is not None:  # the call stopped between a cond pass and its uncond pass
            self.link.recv(torch.empty_like(state["pending"]))
        self.link.send(torch.zeros(state["ctrl_len"], dtype=torch.float64, device=self.link.device))

    def _lost(self, lost: PeerLost) -> None:
        log.error("%s", lost)
        if self.on_lost is not None:
            self.on_lost(lost)


def _last_step(scheduler: Any) -> bool:
    """Whether the step being computed is the loop's last. The scheduler's step index is a host int
    (None until its first `step`), so this reads nothing back from the device; steps that a step cache
    skips still pass through `scheduler.step`, so the count holds with it too."""
    index = getattr(scheduler, "step_index", None) or 0
    return index >= len(scheduler.timesteps) - 1


# --- rank 1 ------------------------------------------------------------------------------------------
def serve(transformer: Any, link: CfgLink, *, should_stop: Callable[[], bool] = lambda: False) -> int:
    """The follower's loop: wait for a job in the store, then run one uncond pass per step until rank 0
    says the call ended. Returns the number of jobs served once rank 0 closed the pair (or
    `should_stop()` turned true); raises `PeerLost` when rank 0 dies (its store goes with it)."""
    served = 0
    while not should_stop():
        key = _JOB_KEY.format(served + 1)
        try:
            if not link.store.check([key]):
                time.sleep(_POLL_S)
                continue
            data = link.store.get(key)
            link.store.delete_key(key)
        except Exception as exc:
            raise PeerLost(f"CFG-parallel store unreachable (rank 0 gone?): {exc}") from exc
        if not data:  # rank 0 closed the pair
            break
        _serve_job(transformer, link, _loads(data))
        served += 1
    return served


def _serve_job(transformer: Any, link: CfgLink, header: dict[str, Any]) -> None:
    dev = link.device

    def on_device(value: Any) -> Any:  # dtypes travel as they were on rank 0
        return value.to(dev) if isinstance(value, torch.Tensor) else value

    constant = {
        "encoder_hidden_states": on_device(header["neg"]),
        "encoder_hidden_states_mask": on_device(header["neg_mask"]),
        "img_shapes": header["img_shapes"],
        "guidance": on_device(header["guidance"]),
        "attention_kwargs": header["attention_kwargs"],
        "additional_t_cond": on_device(header["additional_t_cond"]),
    }
    timestep_shape = header["timestep_shape"]
    ctrl = torch.empty(1 + max(1, int(torch.Size(timestep_shape).numel())), dtype=torch.float64, device=dev)
    hidden = torch.empty(header["hidden_shape"], dtype=header["hidden_dtype"], device=dev)
    with torch.inference_mode():
        while True:
            link.recv(ctrl)
            if ctrl[0].item() == _END:
                return
            link.recv(hidden)
            timestep = ctrl[1:].to(header["timestep_dtype"]).reshape(timestep_shape)
            with transformer.cache_context("uncond"):
                out = transformer(hidden_states=hidden, timestep=timestep, return_dict=False, **constant)[0]
            link.send(out)


