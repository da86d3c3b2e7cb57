"""`bench/memory_plans_gpu.py --fp8`: `quality=fast` jobs with FP8 weights against bf16, full memory and
capped (issue 17, FP8 item). One process, one build of the full-size synthetic model, in this order;
every row is saved as soon as it exists, and a job that would end after --budget-s is skipped:

  linear    one feed-forward GEMM of the 640/4 bucket (9.7 k tokens, 3072 → 12288): bf16 against the
            FP8 linear (eager: activation quantisation + `torch._scaled_mm`), fast and exact
            accumulation; time and error against float32
  full      `DecomposePipeline.place` (plan `full`) + `_accelerate` (compile, warm-up 640x4) without FP8:
            an exact job (the reference) and a bf16 fast job; then the FP8 copy is made in place
            (`fp8.convert`) and its graphs warmed (`weights_for(True)` + the runner's warm-up): a fast
            FP8 job, and the exact job again, which must be bitwise the first one
  caps      the same pipeline re-placed by `PlacedPipeline` (FP8 copy pinned on the host beside the
            bf16 master) under `choose_plan(cap, fp8=True)` with the process capped, --caps in the
            order given: per cap a fast FP8 job and a fast bf16 job; at the last cap an exact job
            (bitwise against the reference)

The steps are `--steps` requested (a fast job runs 60 % of them with step caching, as the worker does).
Errors: relative error of the final latents against the full-memory exact job of the same requested
steps, against the full-memory bf16 fast job, and (capped FP8 rows) against the full-memory FP8 one.
"""

from __future__ import annotations

import os
import time
import traceback

import torch

from bench import gpu_timing as gt
from bench.bench_sections import PROMPT, SEED
from bench.worker_path_gpu import CapturingRunner, _err, _graphs, _step_row, accelerate
from layerq.params import DecomposeParams
from worker.accel import fp8
from worker.accel.synthetic import build_pipeline, sample_image
from worker.block_streaming import transformer_blocks
from worker.memory_plan import GIB, ModelFootprint, choose_plan
from worker.pipeline import DecomposePipeline


def linear_section(device: str) -> dict:
    """One 640/4 feed-forward GEMM, bf16 vs FP8 (eager), with errors against float32."""
    if device != "cuda":
        return {}
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(9664, 3072, device="cuda", generator=g, dtype=torch.bfloat16)
    w = (torch.randn(12288, 3072, device="cuda", generator=g) * 0.02).to(torch.bfloat16)
    ref = x.float() @ w.float().t()
    w8, ws = fp8.quantize_rows(w)
    x8, xs = fp8.quantize_rows(x)

    def timed(fn, n=20):
        for _ in range(3):
            fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            out = fn()
        b.record()
        b.synchronize()
        return out, a.elapsed_time(b) / n

    def err(out):
        return round(float((out.float() - ref).norm() / ref.norm()), 5)

    row = {}
    out, ms = timed(lambda: x @ w.t())
    row["bf16"] = {"ms": round(ms, 3), "rel_err": err(out)}
    for accum in (True, False):
        out, ms = timed(lambda: fp8.fp8_linear(x, w8, ws, None, fast_accum=accum))
        gemm_out, gemm_ms = timed(lambda: torch._scaled_mm(x8, w8.t(), scale_a=xs[:, None], scale_b=ws[None, :],
                                                           out_dtype=torch.bfloat16, use_fast_accum=accum))
        row[f"fp8_fast_accum_{accum}"] = {"ms_with_quantisation": round(ms, 3), "gemm_ms": round(gemm_ms, 3),
                                         "rel_err": err(out)}
    return row


def main(args) -> int:
    from bench.memory_plans_gpu import place_under_cap  # lazy: that script imports this one

    t_start, device, res = gt.start(args)
    res["jobs"] = []
    dev = torch.device(device)

    save = gt.saver(res, os.path.join(args.out, "memory_plans_fp8.json"), t_start)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    res["scaled_mm"] = fp8.scaled_mm_available(dev) or "row-wise FP8 GEMM available"
    try:
        res["linear"] = linear_section(device)
    except Exception as exc:  # noqa: BLE001 - keep the rest
        traceback.print_exc()
        res["linear"] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
    print("linear", res["linear"], flush=True)
    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    fp = ModelFootprint.from_pipeline(pipe)
    res["footprint_gib"] = {k: round(v / GIB, 4) for k, v in vars(fp).items() if k.endswith("bytes")}
    dp = DecomposePipeline.place(pipe, dev, pipe.transformer.dtype, model_id="synthetic", path="-",
                                 card_free_bytes=total)
    g0 = _graphs()
    acc_s = accelerate(dp, False)
    res["accelerate"] = {"s": round(acc_s, 1), "graphs": _graphs() - g0, "options": dp.runner.options.describe(),
                         **gt.peak_gib()}
    print("accelerate", res["accelerate"], flush=True)
    dp.runner = CapturingRunner(dp.runner)
    save()

    img = sample_image(640, 640, seed=0)
    exact = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)
    fast = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps, quality="fast")
    refs: dict[str, torch.Tensor] = {}

    def job(label: str, cap, params, est_s: float, weights: str, keep: str | None = None) -> None:
        if left() < est_s:
            res["jobs"].append({"label": label, "cap_gib": cap, "skipped": f"{left():.0f} s left"})
            print("skip", label, flush=True)
            return
        modules = dp.fp8_modules
        if weights == "bf16":
            dp.fp8_modules = []  # this fast job keeps the bf16 weights
        placement = dp.placement
        copied0 = placement.copier.bytes_copied if placement else 0
        gt.reset_peak()
        g0 = _graphs()
        try:
            layers, seconds = gt.timed(dp.run, img, params)
            rec = dp.runner.last
            row = {"e2e_s": round(seconds, 2), **_step_row(rec), "graphs_compiled": _graphs() - g0, **gt.peak_gib()}
            if placement is not None:
                row["copied_gb"] = round((placement.copier.bytes_copied - copied0) / 1e9, 2)
                row["stack_mode"] = placement.transformer_stack.mode
            lat = rec.latents
            row["rel_err_vs_exact_full"] = _err(lat, refs.get("exact"))
            row["rel_err_vs_bf16_fast_full"] = _err(lat, refs.get("fast bf16"))
            if weights == "fp8":
                row["rel_err_vs_fp8_fast_full"] = _err(lat, refs.get("fast fp8"))
            if params.quality == "exact" and "exact" in refs:
                row["bitwise_equal_to_exact_full"] = bool(torch.equal(lat, refs["exact"]))
            if keep:
                refs[keep] = lat
        except Exception as exc:  # noqa: BLE001 - keep the other rows
            traceback.print_exc()
            row = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        finally:
            dp.fp8_modules = modules
        row = {"label": label, "cap_gib": cap, "weights": weights, "plan": dp.memory_plan.get("name"), **row}
        res["jobs"].append(row)
        print(row, flush=True)
        save()

    job("exact", None, exact, 30, "bf16", keep="exact")
    job("fast", None, fast, 20, "bf16", keep="fast bf16")
    # The FP8 copy, made in place on the GPU as a worker's `full` plan does at start.
    try:
        modules, convert_s = gt.timed(lambda: [m for b in transformer_blocks(pipe.transformer) for m in fp8.convert(b)])
        dp.fp8_modules = modules
        plan = choose_plan(total, fp, ((640, 4),), fp8=True) if device == "cuda" else None
        dp.memory_plan = plan.describe() if plan else dp.memory_plan
        res["fp8_convert"] = {"s": round(convert_s, 1), "modules": fp8.describe(modules), **gt.peak_gib()}
        g0 = _graphs()
        if device == "cuda":
            with torch.inference_mode(), dp.weights_for(True):
                _, warm_s = gt.timed(dp.runner.warmup, [(640, 4)], captions=False)
            res["fp8_convert"].update(warmup_s=round(warm_s, 1), warmup_graphs=_graphs() - g0)
        print("fp8", res["fp8_convert"], flush=True)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        res["fp8_convert"] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        save()
        return 1
    save()
    job("fast", None, fast, 20, "fp8", keep="fast fp8")
    job("exact after FP8", None, exact, 40, "bf16")

    placement = None
    caps = [float(c) for c in args.caps.split(",") if c.strip()]
    for n, cap in enumerate(caps):
        if left() < 15:
            res["jobs"].append({"label": "caps", "cap_gib": cap, "skipped": f"{left():.0f} s left"})
            break
        budget = int(cap * GIB) if device == "cuda" else _cpu_budget(fp, cap)
        plan = choose_plan(budget, fp, ((640, 4),), device_type=device, source="cap", fp8=True)
        placement, timings = place_under_cap(dp, pipe, placement, plan, cap, total, dev, fp8=True)
        res.update(timings)
        res.setdefault("plans", {})[f"{cap:g}"] = plan.describe()
        print("plan", cap, plan.describe(), flush=True)
        job("fast", cap, fast, 15, "fp8")
        job("fast", cap, fast, 20, "bf16")
        if n == len(caps) - 1:
            job("exact on an FP8 worker", cap, exact, 20, "bf16")
    save()
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


def _cpu_budget(fp: ModelFootprint, cap: float) -> int:
    from bench.memory_plans_gpu import cpu_budget

    return cpu_budget(fp, ((640, 4),), cap)
