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


def saver(results: dict, path: str, t_start: float):
    """`save()`: write `results` (with the seconds elapsed) to `path`; benchmarks call it after each
    section, so a call cut short by its time limit still brings back what was measured."""
    import json

    def save() -> None:
        results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(path, "w") as f:
            json.dump(results, f, indent=1, default=str)

    return save


def guard(results: dict, save):
    """`guarded(name, fn)`: run one section; an exception is printed and recorded under
    `results["errors"][name]` (the next section still runs); the results are saved either way."""
    import traceback

    def guarded(name: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - record it, keep what was measured
            traceback.print_exc()
            results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[:3000]
            return None
        finally:
            save()

    return guarded


class MemoryPhases:
    """Peak CUDA memory per named phase of code we do not own: wrap its functions with `wrap`.

    Phases nest ("accelerate/prepare/attention_probe"). The peak counters are reset at every phase
    boundary and each stretch's peak is folded into every phase open during it, so each phase's peak
    is its own (a parent's includes its children's). Syncs at every boundary: timings are not clean.
    """

    def __init__(self):
        self.rows: dict[str, dict] = {}
        self.stack: list[str] = []
        self.intervals: list[tuple[float, float, str]] = []  # (start µs, end µs since the epoch, path)

    def _fold(self) -> None:
        if not cuda():
            return
        with contextlib.suppress(Exception):  # a failed phase must not hide its own error
            torch.cuda.synchronize()
        a, r = torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30
        for path in self.stack:
            row = self.rows[path]
            row["peak_allocated_gib"] = round(max(row.get("peak_allocated_gib", 0.0), a), 2)
            row["peak_reserved_gib"] = round(max(row.get("peak_reserved_gib", 0.0), r), 2)
        torch.cuda.reset_peak_memory_stats()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._fold()
        path = f"{self.stack[-1]}/{name}" if self.stack else name
        row = self.rows.setdefault(path, {"calls": 0, "seconds": 0.0})
        row["calls"] += 1
        if cuda():
            row.setdefault("allocated_before_gib", round(torch.cuda.memory_allocated() / 2**30, 2))
        self.stack.append(path)
        t0 = time.time()
        try:
            yield
        except BaseException as exc:
            row.setdefault("error", f"{type(exc).__name__}: {exc}"[:400])
            raise
        finally:
            self._fold()
            self.stack.pop()
            t1 = time.time()
            row["seconds"] = round(row["seconds"] + t1 - t0, 2)
            self.intervals.append((t0 * 1e6, t1 * 1e6, path))
            if cuda():
                row["allocated_after_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)

    def wrap(self, fn, name):
        """`fn` run inside a phase; `name` is a string or a function of fn's arguments."""
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.phase(name(*args, **kwargs) if callable(name) else name):
                return fn(*args, **kwargs)

        return wrapper

    def at(self, t_us: float | None) -> str | None:
        """The innermost phase open at wall-clock time `t_us` (µs since the epoch)."""
        inside = [(end - start, path) for start, end, path in self.intervals if t_us and start <= t_us <= end]
        return min(inside)[1] if inside else None


_KEEP_FRAMES = ("torch", "diffusers", "transformers", "worker", "bench")
_SKIP_FRAMES = ("torch/nn/modules/module.py", "torch/utils/_contextlib.py", "bench/gpu_timing.py", "bench/gpu_probe.py")


def _frame_text(frame: dict, root: str) -> str:
    name = str(frame.get("filename", "?"))
    name = name.split("site-packages/", 1)[-1] if "site-packages/" in name else name.replace(root, "")
    return f"{name}:{frame.get('line')} {frame.get('name')}"


def _stack_key(frames, depth: int, root: str) -> tuple:
    """Innermost 3 relevant frames (the op) + the next `depth`-3 outside torch (the model code)."""
    files = [(f, str(f.get("filename", ""))) for f in frames or () if isinstance(f, dict)]
    rel = [f for f, name in files if any(k in name for k in _KEEP_FRAMES) and not any(s in name for s in _SKIP_FRAMES)]
    outer = [f for f in rel[3:] if "/torch/" not in str(f.get("filename", ""))]
    return tuple(_frame_text(f, root) for f in rel[:3] + outer[: depth - 3]) or ("<no python frames>",)


def memory_peak_report(snapshot: dict, device: int = 0, top: int = 15, depth: int = 8, phases=None) -> dict:
    """From `torch.cuda.memory._snapshot()` taken with history on: the moment the trace's live
    allocations peaked, and those live then grouped by identical stack (largest groups first).

    Only allocations made while history was on are seen: the peak is relative to the recording's start.
    """
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    traces = snapshot.get("device_traces") or []
    trace = traces[device] if device < len(traces) and traces[device] else max(traces, key=len, default=[])
    actions: dict[str, int] = {}
    for e in trace:
        actions[str(e.get("action"))] = actions.get(str(e.get("action")), 0) + 1
    free = "free_completed" if actions.get("free_completed") else "free_requested"

    def replay(stop: int):
        live, cur, peak, peak_i = {}, 0, 0, -1
        for i, e in enumerate(trace[:stop]):
            act, addr = e.get("action"), e.get("addr")
            if act == "alloc":
                live[addr] = e
                cur += int(e.get("size") or 0)
            elif act == free and addr in live:
                cur -= int(live.pop(addr).get("size") or 0)
            if cur > peak:
                peak, peak_i = cur, i
        return live, peak, peak_i

    _, peak, peak_i = replay(len(trace))
    live, _, _ = replay(peak_i + 1)
    groups: dict[tuple, list] = {}
    for e in live.values():
        g = groups.setdefault(_stack_key(e.get("frames"), depth, root), [0, 0, 0])
        size = int(e.get("size") or 0)
        g[0], g[1], g[2] = g[0] + size, g[1] + 1, max(g[2], size)
    ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    peak_time = trace[peak_i].get("time_us") if 0 <= peak_i < len(trace) else None
    segs = snapshot.get("segments") or []
    return {
        "trace_entries": len(trace), "actions": actions, "free_action_used": free,
        "peak_over_recording_start_gib": round(peak / 2**30, 3), "peak_index": peak_i, "peak_time_us": peak_time,
        "phase_at_peak": phases.at(peak_time) if phases is not None else None,
        "live_at_peak": len(live),
        "groups": [{"gib": round(b / 2**30, 3), "count": n, "largest_mib": round(m / 2**20, 1), "stack": list(k)}
                   for k, (b, n, m) in ranked],
        "ooms": [{**{k: v for k, v in e.items() if k != "frames"},
                  "stack": list(_stack_key(e.get("frames"), depth, root)),
                  "phase": phases.at(e.get("time_us")) if phases is not None else None}
                 for e in trace if e.get("action") == "oom"],
        "segments_now_gib": {k: round(sum(int(s.get(k) or 0) for s in segs) / 2**30, 2)
                             for k in ("total_size", "allocated_size", "active_size")},
    }


_KERNEL_CATEGORIES = (
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("gemm", ("gemm", "cutlass", "sm90", "nvjet", "xmma", "cublas", "addmm", "::mm", "::bmm")),
    ("triton_fused", ("triton_",)),
    ("copy_cat", ("memcpy", "memset", "copy", "catarray", "::cat")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in _KERNEL_CATEGORIES if any(k in low for k in keys)), "elementwise_other")


def kernel_table(prof, n_blocks: int = 1, top: int = 40) -> dict:
    """Device time per kernel and per category from a finished `torch.profiler.profile`.

    Without CUDA kernels in the trace (CPU run), CPU ops' self time stands in for kernel time.
    """
    from torch.autograd import DeviceType

    events = list(prof.events())
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA]
    source = "cuda kernels" if kernels else "cpu ops (self time)"
    rows: dict[str, list] = {}
    for e in kernels or [e for e in events if getattr(e, "device_type", None) == DeviceType.CPU]:
        us = e.time_range.elapsed_us() if kernels else e.self_cpu_time_total
        r = rows.setdefault(e.name, [0, 0.0])
        r[0], r[1] = r[0] + 1, r[1] + us
    total_us = sum(us for _, us in rows.values())
    cats: dict[str, float] = {}
    for name, (_, us) in rows.items():
        cats[kernel_category(name)] = cats.get(kernel_category(name), 0.0) + us
    ranked = sorted(rows.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "source": source, "total_ms": round(total_us / 1e3, 2), "distinct": len(rows), "n_blocks": n_blocks,
        "categories_ms": {c: round(us / 1e3, 2) for c, us in sorted(cats.items(), key=lambda kv: -kv[1])},
        "categories_per_block_ms": {c: round(us / 1e3 / max(n_blocks, 1), 3) for c, us in cats.items()},
        "top": [{"name": name[:120], "category": kernel_category(name), "count": n, "total_ms": round(us / 1e3, 3),
                 "avg_us": round(us / n, 1)} for name, (n, us) in ranked],
    }


class ClockSampler:
    """Samples the GPU's SM clock, power draw and clock-throttle reasons through NVML every
    `period_s` while in use, to tell a slower kernel from a slower clock (power or thermal
    limits). Inert where NVML is missing (no GPU, no nvidia-ml-py)."""

    def __init__(self, period_s: float = 0.005):
        import threading

        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if cuda() else 0)
        except Exception:  # noqa: BLE001 - no NVML here: record nothing
            self._nvml = None

    def _run(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            self.samples.append((n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                                 n.nvmlDeviceGetPowerUsage(h) / 1000,
                                 n.nvmlDeviceGetCurrentClocksThrottleReasons(h)))
            time.sleep(self.period_s)

    def __enter__(self) -> "ClockSampler":
        if self._nvml is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"samples": 0}
        clocks = [s[0] for s in self.samples]
        power = [s[1] for s in self.samples]
        reasons = 0
        for s in self.samples:
            reasons |= s[2]
        return {"samples": len(self.samples), "sm_mhz_median": statistics.median(clocks), "sm_mhz_min": min(clocks),
                "sm_mhz_max": max(clocks), "power_w_median": round(statistics.median(power), 1),
                "power_w_max": round(max(power), 1), "throttle_reasons_or": hex(reasons)}
