"""Measuring helpers for bench/gpu_bench.py: step events, sync checks, memory, machine ceilings."""

from __future__ import annotations

import contextlib
import datetime
import platform
import statistics
import time
import warnings

import torch


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


class StepRecorder:
    """A `callback_on_step_end` that timestamps each step on the GPU and keeps the final latents.

    With `watch_syncs`, CUDA's sync debug mode is on from the end of step 0 to the last step's
    callback, so any host synchronisation inside the loop shows up as a warning we count.
    """

    def __init__(self, watch_syncs: bool = False):
        self.watch_syncs = watch_syncs and cuda()
        self.events: list = []
        self.host_times: list[float] = []
        self.latents: torch.Tensor | None = None
        self.num_steps = 0

    def __call__(self, pipe, i, t, kwargs):
        if cuda():
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.events.append(ev)
        self.host_times.append(time.perf_counter())
        self.num_steps = i + 1
        last = i == pipe.num_timesteps - 1
        if last:
            self.latents = kwargs["latents"].detach().clone()
        if self.watch_syncs:
            torch.cuda.set_sync_debug_mode(0 if last else 1)
        return {}

    def step_times_s(self) -> list[float]:
        """Per-step times from step 1 on (step 0 also holds the prompt encoding's tail)."""
        if self.events:
            sync()
            return [a.elapsed_time(b) / 1000 for a, b in zip(self.events, self.events[1:])]
        return [b - a for a, b in zip(self.host_times, self.host_times[1:])]

    def median_step_s(self) -> float | None:
        times = self.step_times_s()
        return statistics.median(times) if times else None


@contextlib.contextmanager
def count_sync_warnings():
    """Collects the warnings CUDA's sync debug mode raises; yields the list."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list = []
        try:
            yield found
        finally:
            if cuda():
                torch.cuda.set_sync_debug_mode(0)
            found.extend(
                str(w.message)
                for w in caught
                if "synchroniz" in str(w.message).lower() and "prototype feature" not in str(w.message)
            )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖₂ / ‖b‖₂ over all elements, in float32."""
    a, b = a.float(), b.float().to(a.device)
    return float((a - b).norm() / b.norm())


def reset_peak() -> None:
    if cuda():
        sync()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> dict:
    if not cuda():
        return {}
    sync()
    return {
        "allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    }


def timed(fn, *args, **kwargs):
    """(result, seconds) with the device drained before and after."""
    sync()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    sync()
    return out, time.perf_counter() - t0


def env_info() -> dict:
    import diffusers
    import transformers

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cudnn": torch.backends.cudnn.version() if cuda() else None,
    }
    if cuda():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_mem_gib=round(props.total_memory / 2**30, 1), sms=props.multi_processor_count)
    return info


def ceilings() -> dict:
    """The two machine ceilings METHOD.md asks for: bf16 matmul rate and device copy bandwidth."""
    if not cuda():
        return {}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    sync()
    tflops = 2 * n**3 * 20 / (start.elapsed_time(end) / 1000) / 1e12
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    y.copy_(x)
    sync()
    start.record()
    for _ in range(10):
        y.copy_(x)
    end.record()
    sync()
    tbps = 2 * x.numel() * 10 / (start.elapsed_time(end) / 1000) / 1e12
    del a, b, x, y
    torch.cuda.empty_cache()
    return {"bf16_matmul_tflops": round(tflops, 1), "copy_tb_per_s": round(tbps, 2)}


def start(args) -> tuple[float, str, dict]:
    """The benchmarks' common opening: output folder made, start time, device, and a results dict
    holding (and printing) the environment and the measured ceilings."""
    import json
    import os

    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    results: dict = {"env": env_info(), "args": vars(args)}
    print(json.dumps(results["env"]), flush=True)
    results["ceilings"] = ceilings()
    print("ceilings", results["ceilings"], flush=True)
    return t_start, ("cuda" if cuda() else "cpu"), results
