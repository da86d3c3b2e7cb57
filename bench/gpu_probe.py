"""One GPU run for the questions runs 4-5 left open (bench/GPU_NOTES.md), in one process:

  ceilings       matmul rate, copy bandwidth, card and versions (bench/gpu_timing.py)
  build          the synthetic pipeline (worker.accel.synthetic.build_pipeline, --size full|small)
  ref            the authors' call (--no-ref skips it), before the warm-up, then freed; its latents
                 are the reference for the jobs' error
  warmup_memory  why `DecomposePipeline._accelerate` peaks at 73.3 GiB allocated while a job peaks at
                 60.3: the worker's call, with the peak split by phase (prepare, attention probe, each
                 warm-up item, transformer / VAE / text-encoder calls) by wrapping its functions from
                 here, and the CUDA allocator's history: the live allocations at the peak, grouped by
                 stack, analysed on the machine (the snapshot itself stays there)
  jobs           two `DecomposePipeline.run` jobs: e2e, median step, peak memory, error vs ref
  kernel_profile one transformer call (cond pass, the job's own inputs) under torch.profiler, compiled
                 (fast path) and eager (the authors' transformer): top kernels and time per category
  exact_caption  one worker-path job with an empty prompt and fast_captions off (the worker's CUDA
                 default), 2 steps: caption seconds vs the 36.06 s of the authors' call

Every part is recorded with its error (OOM included) and the next one runs; a part that would end
after --budget-s is skipped. JSON is printed after each part and written to OUT/gpu_probe.json.

  PYTHONUNBUFFERED=1 python bench/gpu_probe.py --size full --budget-s 520 --out $OUT
  python bench/gpu_probe.py --size small --budget-s 300 --out /tmp/probe_out      # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
import traceback
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from bench.worker_path_gpu import CapturingRunner, _err, _graphs, reference_job, worker_job  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker import acceleration  # noqa: E402
from worker.accel import attention, decomposer  # noqa: E402
from worker.accel.decomposer import FastDecomposer  # noqa: E402
from worker.accel.rope import enable_real_rope  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.accel.transformer import compile_blocks, repeated_blocks  # noqa: E402
from worker.pipeline import DecomposePipeline, _caption_without_cudnn_attention  # noqa: E402

# Seconds a part may take on an H100/H200 at full size (conservative); small size: SMALL_EST each.
EST = {"build": 20, "ref": 60, "warmup_memory": 75, "job": 48, "kernel_profile": 20, "eager_profile": 8,
       "exact_caption": 70}
SMALL_EST = 5
CAPTION_REF_S = 36.06  # the authors' get_image_caption, run 2 (bench/GPU_NOTES.md)


@contextlib.contextmanager
def patched(*triples):
    """`decomposer.patched` for each (obj, attr, value), undone in reverse order."""
    with contextlib.ExitStack() as stack:
        for obj, attr, value in triples:
            stack.enter_context(decomposer.patched(obj, attr, value))
        yield


def first_call_recorder(fn, store: dict):
    def wrapper(*args, **kwargs):
        if not store:
            store.update(args=args, kwargs=kwargs)
        return fn(*args, **kwargs)

    return wrapper


def worker_pipeline(ctx) -> DecomposePipeline:
    """The worker's object around the built pipeline (as `DecomposePipeline.load` makes it)."""
    if ctx.dp is None:
        ctx.dp = DecomposePipeline(pipe=ctx.pipe, device=torch.device(ctx.device), dtype=ctx.pipe.transformer.dtype,
                                   model_id="synthetic", path="-")
    return ctx.dp


def part_warmup_memory(ctx, out):
    pipe, phases, dp = ctx.pipe, gt.MemoryPhases(), worker_pipeline(ctx)
    calls = [0]

    def transformer_phase(*a, **k):
        calls[0] += 1
        return "transformer (1st call: compile)" if calls[0] == 1 else "transformer"

    def item_phase(self, image=None, **kwargs):
        return f"item {image.size}"

    t, W = pipe.transformer, phases.wrap
    wraps = [(acceleration, "prepare", W(acceleration.prepare, "prepare")),
             (attention, "probe_backends", W(attention.probe_backends, "attention_probe")),
             (decomposer, "compile_blocks", W(decomposer.compile_blocks, "compile_blocks")),
             (FastDecomposer, "warmup", W(FastDecomposer.warmup, "warmup")),
             (FastDecomposer, "__call__", W(FastDecomposer.__call__, item_phase)),
             (t, "forward", W(t.forward, transformer_phase)),
             (pipe, "encode_prompt", W(pipe.encode_prompt, "encode_prompt")),
             (pipe.vae, "encode", W(pipe.vae.encode, "vae.encode")),
             (pipe.vae, "decode", W(pipe.vae.decode, "vae.decode"))]
    if gt.cuda():
        out["before_gib"] = {"allocated": round(torch.cuda.memory_allocated() / 2**30, 2),
                             "reserved": round(torch.cuda.memory_reserved() / 2**30, 2)}
        try:
            torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
        except TypeError:  # older signature
            torch.cuda.memory._record_memory_history(max_entries=200000)
    g0 = _graphs()
    try:
        with patched(*wraps), phases.phase("accelerate"):
            dp._accelerate(ctx.fast_captions, ((640, 4),))
    finally:
        out["phases"] = phases.rows
        out["graphs_compiled"] = _graphs() - g0
        if dp.runner is not None:
            out["attention_probes"] = [p.__dict__ for p in dp.runner.attention_probes]
            out["warmup_items_s"] = {k: round(v, 1) for k, v in dp.runner.warmup_s.items()}
        if gt.cuda():
            t0 = time.perf_counter()
            snap = torch.cuda.memory._snapshot()
            torch.cuda.memory._record_memory_history(enabled=None)
            out["history"] = gt.memory_peak_report(snap, torch.cuda.current_device(), phases=phases)
            out["history"]["analysis_s"] = round(time.perf_counter() - t0, 1)
            out["history"]["peak_estimate_gib"] = round(  # allocated before recording + the trace's peak
                out["before_gib"]["allocated"] + out["history"]["peak_over_recording_start_gib"], 2)
            del snap
    ctx.fast = dp.runner


def part_jobs(ctx, out, args, left):
    dp, pipe = worker_pipeline(ctx), ctx.pipe
    out["fast_path"] = ctx.fast is not None  # False: _accelerate failed, the jobs run the plain pipeline
    out["jobs"], lat = [], []
    params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=ctx.steps)
    dp.runner = CapturingRunner(ctx.fast or pipe)
    try:
        for n in range(args.jobs):
            if left() < ctx.est("job"):
                out["skipped_jobs"] = args.jobs - n
                break
            rec = {} if ctx.call else ctx.call  # the first transformer call of the first job (cond pass)
            with patched((pipe.transformer, "forward", first_call_recorder(pipe.transformer.forward, rec))):
                row, latents = worker_job(dp, ctx.image, params)
            row["rel_err_vs_ref"] = _err(latents, ctx.ref_latents)
            out["jobs"].append(row)
            lat.append(latents)
            print(f"job {n + 1}", json.dumps(row, default=str), flush=True)
    finally:
        dp.runner = ctx.fast
    if len(lat) > 1:
        out["run_to_run_err"] = _err(lat[0], lat[1])
        out["first_over_steady"] = round(out["jobs"][0]["e2e_s"] / out["jobs"][1]["e2e_s"], 3)


def profile_call(call, n_blocks: int) -> dict:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gt.cuda() else [])
    with torch.inference_mode():
        call()  # warm
        with gt.ClockSampler() as clocks:  # SM clock and power while the unprofiled calls run
            times = [gt.timed(call)[1] for _ in range(5)]
        call_s = sorted(times)[len(times) // 2]
        with torch.profiler.profile(activities=acts) as prof:
            _, prof_s = gt.timed(call)
    return {"call_ms": round(call_s * 1e3, 1), "call_ms_all": [round(t * 1e3, 1) for t in times],
            "clocks": clocks.summary(), "profiled_call_ms": round(prof_s * 1e3, 1), **gt.kernel_table(prof, n_blocks)}


def part_kernel_profile(ctx, out, left):
    pipe, fast = ctx.pipe, ctx.fast
    if not ctx.call:  # the jobs did not run: take the inputs from a 2-step job
        with patched((pipe.transformer, "forward", first_call_recorder(pipe.transformer.forward, ctx.call))):
            worker_pipeline(ctx).run(ctx.image, DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=2))
    t = pipe.transformer
    n_blocks = len(repeated_blocks(t))
    out["inputs"] = {k: list(v.shape) for k, v in ctx.call["kwargs"].items() if isinstance(v, torch.Tensor)}
    out["fast"] = profile_call(lambda: t(*ctx.call["args"], **ctx.call["kwargs"]), n_blocks)
    out["fast"]["options"] = fast.options.describe() if fast else "none (no fast path)"
    print("kernel_profile fast", json.dumps(out["fast"]["categories_ms"]), flush=True)
    if fast is None or left() < ctx.est("eager_profile"):
        return
    fast.restore()  # eager blocks, complex RoPE, SDPA default: the authors' transformer
    try:
        out["eager"] = profile_call(lambda: t(*ctx.call["args"], **ctx.call["kwargs"]), n_blocks)
    finally:  # FastDecomposer.apply's switches again, without re-probing attention
        o = fast.options
        if o.real_rope:
            enable_real_rope(t)
        attention.apply_backend(t, fast.attention_backend)
        if o.compile_blocks:
            compile_blocks(t, dynamic=o.compile_dynamic, cuda_graphs=o.cuda_graphs, mode=o.compile_mode)
    # The compiled call again, after the eager one: same kernels slower in one of them is either the
    # order (clocks warming up or down) or the work's density (power-limited clocks); this tells which.
    if left() >= ctx.est("kernel_profile"):
        out["fast_again"] = profile_call(lambda: t(*ctx.call["args"], **ctx.call["kwargs"]), n_blocks)


def part_exact_caption(ctx, out):
    fast, times = ctx.fast, []

    def timed_wrap(fn):
        def wrapper(*a, **k):
            res, s = gt.timed(fn, *a, **k)
            times.append({"s": round(s, 2), "tokens": len(res[0]) if isinstance(res, list) and res else None})
            return res
        return wrapper

    target = (fast.captioner, "generate_ids") if fast else (ctx.pipe, "get_image_caption")
    out["timed"] = "Captioner.generate_ids" if fast else "pipe.get_image_caption (plain path wrapper)"
    out["caption_options"] = fast.options.describe() if fast else None
    dp = worker_pipeline(ctx)
    dp.runner = CapturingRunner(fast or ctx.pipe)
    try:
        with patched((*target, timed_wrap(getattr(*target)))):
            row, _ = worker_job(dp, ctx.image, DecomposeParams(prompt="", seed=SEED, num_inference_steps=2))
    finally:
        dp.runner = fast
    out.update(job=row, captions=times)
    if times:
        out["caption_s"] = times[0]["s"]
        out["vs_reference_36_06_s"] = round(times[0]["s"] / CAPTION_REF_S, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--steps", type=int, default=None, help="job steps (default 50 full, 3 small)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--ref", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--budget-s", type=float, default=520, help="skip a part that would end after this")
    ap.add_argument("--fast-captions", action="store_true",
                    help="warm up and caption as a worker with LAYERQ_FAST_CAPTIONS=1 (static cache, compiled, batched)")
    ap.add_argument("--skip", nargs="*", default=[], help="parts to leave out, e.g. kernel_profile")
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    t_start = time.perf_counter()
    full = args.size == "full"
    ctx = SimpleNamespace(device="cuda" if gt.cuda() else "cpu", pipe=None, dp=None, fast=None, ref_latents=None,
                          call={}, image=sample_image(640, 640, seed=0), steps=args.steps or (50 if full else 3),
                          est=lambda k: EST[k] if full else SMALL_EST,
                          fast_captions=args.fast_captions)
    res: dict = {"env": gt.env_info(), "args": vars(args)}
    print(json.dumps(res["env"]), flush=True)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    def part(name, est, fn, needs_pipe=True):
        out = res[name] = {}
        if name in args.skip:
            out["skipped"] = "--skip"
        elif needs_pipe and ctx.pipe is None:
            out["skipped"] = "no pipeline"
        elif left() < est:
            out["skipped"] = f"budget: {left():.0f}s left, needs ~{est}s"
        else:
            t0 = time.perf_counter()
            try:
                fn(out)
            except BaseException as exc:  # noqa: BLE001 - record it (OOM included) and go on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                out["error"] = f"{type(exc).__name__}: {exc}"[:2000]
                out["traceback_tail"] = traceback.format_exc()[-3000:]
                out["oom"] = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc)
                traceback.clear_frames(exc.__traceback__)
                del exc
            out["part_s"] = round(time.perf_counter() - t0, 1)
        gc.collect()
        if gt.cuda():
            torch.cuda.empty_cache()
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        print(name, json.dumps(out, default=str), flush=True)
        with open(os.path.join(args.out, "gpu_probe.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)

    part("ceilings", 0, lambda out: out.update(gt.ceilings()), needs_pipe=False)

    def build(out):
        ctx.pipe, s = gt.timed(build_pipeline, args.size, ctx.device)
        if ctx.device == "cuda":
            _caption_without_cudnn_attention(ctx.pipe)  # as DecomposePipeline.load does on CUDA
        out.update(seconds=round(s, 1), **gt.peak_gib())

    part("build", ctx.est("build"), build, needs_pipe=False)
    if args.ref:
        def ref(out):
            params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=ctx.steps)
            row, ctx.ref_latents = reference_job(ctx.pipe, ctx.image, params, ctx.device)
            out.update(row)

        part("ref", ctx.est("ref"), ref)
    part("warmup_memory", ctx.est("warmup_memory"), lambda out: part_warmup_memory(ctx, out))
    part("jobs", ctx.est("job"), lambda out: part_jobs(ctx, out, args, left))
    part("kernel_profile", ctx.est("kernel_profile"), lambda out: part_kernel_profile(ctx, out, left))
    part("exact_caption", ctx.est("exact_caption"), lambda out: part_exact_caption(ctx, out))
    print("done", res["elapsed_s"], "s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
