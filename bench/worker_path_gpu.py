"""Does the worker's own code path (`worker.pipeline.DecomposePipeline`) get the benchmark's speed-up?

One process, same inputs and seed as bench/gpu_bench.py:

  1. `ref`: the authors' call on the synthetic full-size pipeline (final latents = the reference).
  2. `worker`: `DecomposePipeline(pipe=...)._accelerate(fast_captions=False, warmup_buckets=((640, 4),))`
     — what `DecomposePipeline.load` does on CUDA — then two consecutive `DecomposePipeline.run` jobs:
     per-job wall time, median step time, peak memory, error of the final latents vs `ref`.
  3. `autotune` (if time is left): the same worker path with the regional compile in
     `SpeedOptions(compile_mode="max-autotune-no-cudagraphs")`; its first job includes the compile.

`DecomposePipeline.run`'s `on_step` gives only counts, so the final latents are captured by a thin
proxy around `DecomposePipeline.runner` that chains a `gt.StepRecorder` in front of the worker's own
step callback (it records a CUDA event per step and clones the latents at the last step; everything
else is the worker's call unchanged).

  python bench/worker_path_gpu.py --size full --out $OUT
  python bench/worker_path_gpu.py --size full --autotune-mode none --out $OUT   # parts 1-2 only
  python bench/worker_path_gpu.py --size small --steps 3      # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.pipeline import DecomposePipeline, _caption_without_cudnn_attention  # noqa: E402


class CapturingRunner:
    """Calls the worker's runner unchanged, with a StepRecorder chained before its step callback."""

    def __init__(self, runner):
        self.runner = runner
        self.last: gt.StepRecorder | None = None

    def __call__(self, **kwargs):
        rec = gt.StepRecorder()
        worker_cb = kwargs["callback_on_step_end"]

        def chained(pipe, i, t, cb_kwargs):
            rec(pipe, i, t, cb_kwargs)
            return worker_cb(pipe, i, t, cb_kwargs)

        kwargs["callback_on_step_end"] = chained
        self.last = rec
        return self.runner(**kwargs)

    def __getattr__(self, name):
        return getattr(self.runner, name)


def accelerate(dp: DecomposePipeline, fast_captions: bool, buckets=((640, 4),), **cpu_options) -> float:
    """The worker's speed-ups as a worker starts, in seconds: on CUDA `_accelerate` (compile, attention
    probe, warm-up of `buckets`); on a CPU check the same runner class without compile
    (`SpeedOptions(cache_negative_embeds=True, **cpu_options)`), so a benchmark's path still runs."""
    if dp.device.type == "cuda":
        return gt.timed(dp._accelerate, fast_captions, tuple(buckets))[1]
    from worker.accel.decomposer import prepare
    from worker.accel.options import SpeedOptions

    dp.runner = prepare(dp.pipe, SpeedOptions(cache_negative_embeds=True, **cpu_options))
    return 0.0


def _err(a, b):
    if a is None or b is None or a.shape != b.shape:
        return None
    return round(gt.rel_err(a, b), 5)


def _step_row(rec: gt.StepRecorder) -> dict:
    step = rec.median_step_s()
    out = {"step_s": round(step, 4) if step else None, "steps": rec.num_steps}
    if len(rec.host_times) > 1:
        out["host_step_s"] = round(statistics.median(b - a for a, b in zip(rec.host_times, rec.host_times[1:])), 4)
    return out


def _graphs() -> int:
    """Graphs dynamo has compiled so far in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def worker_job(dp: DecomposePipeline, image, params: DecomposeParams) -> tuple[dict, torch.Tensor | None]:
    counts = []
    gt.reset_peak()
    g0 = _graphs()
    layers, seconds = gt.timed(dp.run, image, params, on_step=lambda done, total: counts.append((done, total)))
    rec = dp.runner.last
    row = {"e2e_s": round(seconds, 2), **_step_row(rec), "graphs_compiled": _graphs() - g0,
           "on_step_calls": len(counts),
           "last_on_step": counts[-1] if counts else None, "layers_out": len(layers),
           "layer_size": list(layers[0].size) if layers else None, **gt.peak_gib()}
    return row, rec.latents


def reference_job(pipe, image, params: DecomposeParams, device: str) -> tuple[dict, torch.Tensor | None]:
    """The authors' call with the kwargs `DecomposePipeline.run` passes: (row, final latents)."""
    rec = gt.StepRecorder()
    gt.reset_peak()
    with torch.inference_mode():
        _, ref_s = gt.timed(
            pipe, image=image, prompt=params.prompt, negative_prompt=params.negative_prompt,
            true_cfg_scale=params.true_cfg_scale, layers=params.layers, num_inference_steps=params.num_inference_steps,
            resolution=params.resolution, cfg_normalize=params.cfg_normalize, use_en_prompt=params.use_en_prompt,
            generator=torch.Generator(device=device).manual_seed(params.seed), num_images_per_prompt=1,
            output_type="pil", callback_on_step_end=rec,
        )
    return {"e2e_s": round(ref_s, 2), **_step_row(rec), **gt.peak_gib()}, rec.latents


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2, help="consecutive worker jobs after the warm-up")
    ap.add_argument("--autotune-mode", default="max-autotune-no-cudagraphs", help='"none" skips part 3')
    ap.add_argument("--autotune-jobs", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=300, help="start part 3 only before this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    t_start, device, res = gt.start(args)

    def save():
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(os.path.join(args.out, "worker_path.json"), "w") as f:
            json.dump(res, f, indent=1, default=str)

    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    if device == "cuda":
        _caption_without_cudnn_attention(pipe)  # as DecomposePipeline.load does on CUDA
    image = sample_image(640, 640, seed=0)
    params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)

    # 1. the authors' call, same kwargs as DecomposePipeline.run passes
    res["ref"], ref_latents = reference_job(pipe, image, params, device)
    print("ref", res["ref"], flush=True)
    save()

    # 2. the worker path
    dp = DecomposePipeline(pipe=pipe, device=torch.device(device), dtype=pipe.transformer.dtype,
                           model_id="synthetic", path="-")
    gt.reset_peak()
    g0 = _graphs()
    _, acc_s = gt.timed(dp._accelerate, False, ((640, 4),))
    runner = dp.runner
    res["accelerate"] = {
        "total_s": round(acc_s, 1), "dp_warmup_s": round(dp.warmup_s, 1), "graphs_compiled": _graphs() - g0,
        "runner_warmup_items_s": {k: round(v, 1) for k, v in runner.warmup_s.items()},
        "options": runner.options.describe(), "attention_backend": runner.attention_backend, **gt.peak_gib(),
    }
    print("accelerate", res["accelerate"], flush=True)
    dp.runner = CapturingRunner(runner)
    jobs, lat = [], []
    for n in range(args.jobs):
        row, latents = worker_job(dp, image, params)
        row["rel_err_vs_ref"] = _err(latents, ref_latents)
        jobs.append(row)
        lat.append(latents)
        print(f"worker job {n + 1}", row, flush=True)
        res["worker"] = {"jobs": jobs}
        save()
    if len(lat) > 1:
        res["worker"]["run_to_run_err"] = _err(lat[0], lat[1])
        res["worker"]["first_over_steady"] = round(jobs[0]["e2e_s"] / jobs[1]["e2e_s"], 3)
    save()

    # 3. the regional compile in another torch.compile mode, same worker path
    mode = None if args.autotune_mode == "none" else args.autotune_mode
    elapsed = time.perf_counter() - t_start
    if mode and elapsed > args.budget_s:
        res["autotune"] = {"skipped": f"{elapsed:.0f}s elapsed"}
    elif mode:
        from worker.accel.decomposer import FastDecomposer
        from worker.accel.transformer import uncompile_blocks

        try:
            uncompile_blocks(pipe.transformer)
            torch._dynamo.reset()
            opts = runner.options.replace(compile_mode=mode, warmup_buckets=())
            fast2, apply_s = gt.timed(lambda: FastDecomposer(pipe, opts).apply())
            dp.runner = CapturingRunner(fast2)
            res["autotune"] = {"mode": mode, "options": opts.describe(), "apply_s": round(apply_s, 1), "jobs": []}
            for n in range(args.autotune_jobs):
                if n and time.perf_counter() - t_start > args.budget_s + 150:
                    break
                row, latents = worker_job(dp, image, params)
                row["rel_err_vs_ref"] = _err(latents, ref_latents)
                row["rel_err_vs_worker_default"] = _err(latents, lat[-1] if lat else None)
                res["autotune"]["jobs"].append(row)
                print(f"autotune job {n + 1} (first includes the compile)", row, flush=True)
                save()
        except Exception as exc:  # noqa: BLE001 - keep parts 1 and 2
            traceback.print_exc()
            res.setdefault("autotune", {})["error"] = f"{type(exc).__name__}: {exc}"[:2000]
    save()
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
