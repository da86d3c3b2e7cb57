"""GPU speed, second round (issue 12), in one process: FA4, fused Q/K/V, GELU epilogue, quality modes.

Sections (--sections, comma-separated, in this order; each is recorded with its error and the next runs;
a section whose estimate would end after --budget-s is skipped):

  micro     kernels alone on the job's shapes: FA4 vs SDPA attention (1 × S × 24 × 128, bf16; error vs a
            float32 reference; first call = FA4's JIT compile), fc1 + GELU vs one GEMM with a GELU
            epilogue, three q/k/v GEMMs vs one fused GEMM
  build     the full-size synthetic pipeline (worker.accel.synthetic)
  ref       the authors' call at --bucket/--layers, 50 steps (final latents = the reference)
  variants  FastDecomposer with one switch set at a time (dynamo reset between): compile + warm-up, then
            --variant-steps steps timed per CUDA event; error vs ref not taken (fewer steps)
  worker    the worker's own path: `DecomposePipeline._accelerate` with the CUDA defaults, then --jobs
            50-step jobs: e2e, step, error vs ref, peak memory, graphs compiled
  quality   one worker job per lossy `quality` (balanced, fast): e2e, transformer calls, error vs ref
  captions  the worker's batch-invariant captioner (on by default): 8 distinct images in one
            `caption_images` call (what the first job of a queue of 8 does with caption look-ahead),
            two of them again alone (cache cleared): tokens identical?, seconds per job, and the
            auto-captioned job in a queue of 8 against the worker job with a prompt (a handed-over
            caption is the prompt, so that job's time is the prompted job's)

  PYTHONUNBUFFERED=1 python bench/gpu_round2.py --size full --out $OUT
  python bench/gpu_round2.py --size small --steps 3 --variant-steps 2 --out /tmp/r2   # CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from bench.worker_path_gpu import CapturingRunner, _err, _graphs, _step_row, reference_job, worker_job  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel import attention  # noqa: E402
from worker.accel.decomposer import FastDecomposer  # noqa: E402
from worker.accel.options import SpeedOptions  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.pipeline import DecomposePipeline, _caption_without_cudnn_attention  # noqa: E402

EST = {"micro": 60, "build": 25, "ref": 55, "variant": 35, "worker": 110, "quality": 60, "captions": 30}

VARIANTS = {
    "native": dict(attention_backend="native", fused_qkv=False, gelu_epilogue=False),
    "fa4": dict(attention_backend="fa4", fused_qkv=False, gelu_epilogue=False),
    "fa4+qkv": dict(attention_backend="fa4", fused_qkv=True, gelu_epilogue=False),
    "fa4+qkv+gelu": dict(attention_backend="fa4", fused_qkv=True, gelu_epilogue=True),
    "native+qkv+gelu": dict(attention_backend="native", fused_qkv=True, gelu_epilogue=True),
    "fa4+gelu": dict(attention_backend="fa4", fused_qkv=False, gelu_epilogue=True),
    "fa4+gelu+tune": dict(attention_backend="fa4", fused_qkv=False, gelu_epilogue=True, compile_tune_kernels=True),
    "fa4+qkv+gelu+tune": dict(attention_backend="fa4", fused_qkv=True, gelu_epilogue=True, compile_tune_kernels=True),
}
# The variants above keep their round-2 meaning: the one-pass q/k norm + RoPE kernel (on by default since
# qkfuse run 1) only where the name says "+qknr".
for _v in VARIANTS.values():
    _v.setdefault("fused_qk_norm_rope", False)
VARIANTS["fa4+gelu+tune+qknr"] = dict(VARIANTS["fa4+gelu+tune"], fused_qk_norm_rope=True)
VARIANTS["native+gelu+tune+qknr"] = dict(VARIANTS["fa4+gelu+tune+qknr"], attention_backend="native")


def bench_ms(fn, iters: int = 20) -> float:
    """Median of `iters` CUDA-event timings after two warm-up calls (ms)."""
    fn()
    fn()
    if not gt.cuda():
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) * 1000 / iters
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def micro(device: str, seqs: tuple[int, ...]) -> dict:
    out: dict = {"attention": {}, "gelu": {}, "qkv": {}}
    from worker.accel import fa4

    why_not = fa4.available()
    out["fa4_available"] = why_not or "yes"
    heads, dim = 24, 128
    for s in seqs:
        g = torch.Generator(device=device).manual_seed(s)
        q, k, v = (torch.randn(1, s, heads, dim, device=device, dtype=torch.bfloat16, generator=g) for _ in range(3))
        ref = attention.math_reference(q, k, v, None)
        row = {}
        sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        flop = 4 * s * s * dim * heads
        row["sdpa_ms"] = round(bench_ms(sdpa), 3)
        row["sdpa_err"] = round(gt.rel_err(sdpa(), ref), 5)
        if why_not is None:
            t0 = time.perf_counter()
            o = fa4.attention(q, k, v)
            gt.sync()
            row["fa4_first_call_s"] = round(time.perf_counter() - t0, 2)
            row["fa4_err"] = round(gt.rel_err(o, ref), 5)
            row["fa4_ms"] = round(bench_ms(lambda: fa4.attention(q, k, v)), 3)
            row["fa4_tflops"] = round(flop / row["fa4_ms"] / 1e9, 1)
        row["sdpa_tflops"] = round(flop / row["sdpa_ms"] / 1e9, 1)
        out["attention"][s] = row
        print("micro attention", s, row, flush=True)
        del q, k, v, ref
    # fc1 + GELU(tanh) vs one GEMM with the GELU epilogue; fused q/k/v GEMM vs three (image and text rows)
    m, d, f = 9600, 3072, 12288
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(m, d, device=device, dtype=torch.bfloat16, generator=g)
    w = torch.randn(f, d, device=device, dtype=torch.bfloat16, generator=g) * d**-0.5
    b = torch.randn(f, device=device, dtype=torch.bfloat16, generator=g)
    ref = torch.nn.functional.gelu(x.float() @ w.float().t() + b.float(), approximate="tanh")
    two = lambda: torch.nn.functional.gelu(torch.nn.functional.linear(x, w, b), approximate="tanh")  # noqa: E731
    one = lambda: torch._addmm_activation(b, x, w.t(), use_gelu=True)  # noqa: E731
    out["gelu"] = {"two_pass_ms": round(bench_ms(two), 3), "epilogue_ms": round(bench_ms(one), 3),
                   "two_pass_err": round(gt.rel_err(two(), ref), 5), "epilogue_err": round(gt.rel_err(one(), ref), 5)}
    print("micro gelu", out["gelu"], flush=True)
    for rows in (9600, 283):
        xs = x[:rows]
        ws = [torch.randn(d, d, device=device, dtype=torch.bfloat16, generator=g) * d**-0.5 for _ in range(3)]
        bs = [torch.randn(d, device=device, dtype=torch.bfloat16, generator=g) for _ in range(3)]
        wf, bf = torch.cat(ws), torch.cat(bs)
        three = lambda: [torch.nn.functional.linear(xs, wi, bi) for wi, bi in zip(ws, bs)]  # noqa: E731
        fused = lambda: torch.nn.functional.linear(xs, wf, bf).chunk(3, dim=-1)  # noqa: E731
        out["qkv"][rows] = {"three_ms": round(bench_ms(three), 4), "fused_ms": round(bench_ms(fused), 4),
                            "max_abs_diff": float(max((a - c).abs().max() for a, c in zip(three(), fused())))}
        print("micro qkv", rows, out["qkv"][rows], flush=True)
    del x, w, b, ref
    return out


def variant(pipe, name: str, changes: dict, image, params, steps: int, prev: FastDecomposer | None) -> tuple[dict, FastDecomposer]:
    if prev is not None:
        prev.restore()
    torch._dynamo.reset()
    gc.collect()
    opts = SpeedOptions.for_device(pipe._execution_device).replace(**changes)
    fast, apply_s = gt.timed(lambda: FastDecomposer(pipe, opts).apply())
    kwargs = dict(image=image, prompt=params.prompt, negative_prompt=params.negative_prompt,
                  true_cfg_scale=params.true_cfg_scale, layers=params.layers, resolution=params.resolution,
                  cfg_normalize=params.cfg_normalize, use_en_prompt=params.use_en_prompt)
    with torch.inference_mode():
        _, warm_s = gt.timed(fast, num_inference_steps=2, generator=torch.Generator(device="cpu").manual_seed(0),
                             **kwargs)
        rec = gt.StepRecorder()
        gt.reset_peak()
        g0 = _graphs()
        _, run_s = gt.timed(fast, num_inference_steps=steps, callback_on_step_end=rec,
                            generator=torch.Generator(device=pipe._execution_device).manual_seed(params.seed), **kwargs)
    row = {"options": opts.describe(), "backend": fast.attention_backend, "apply_s": round(apply_s, 1),
           "warmup_2steps_s": round(warm_s, 1), "run_s": round(run_s, 2), **_step_row(rec),
           "graphs_in_run": _graphs() - g0, **gt.peak_gib()}
    return row, fast


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--sections", default="micro,build,ref,variants,worker,quality")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--bucket", type=int, default=640)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--variant-steps", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--qualities", default="balanced,fast")
    ap.add_argument("--worker-options", default="defaults",
                    help="defaults | best (the fastest variant's switches) | a variant name (recorded)")
    ap.add_argument("--micro-seqs", default="9664,9883")
    ap.add_argument("--no-fast-captions", action="store_true", help="worker section as LAYERQ_FAST_CAPTIONS=0")
    ap.add_argument("--budget-s", type=float, default=560)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    t_start, device, res = gt.start(args)
    sections = args.sections.split(",")
    scale = 1.0 if args.size == "full" else 0.1
    path = os.path.join(args.out, f"round2_{args.bucket}.json")

    save = gt.saver(res, path, t_start)

    def room(section: str, n: int = 1) -> bool:
        left = args.budget_s - (time.perf_counter() - t_start)
        if EST[section] * n * scale * (2.5 if args.bucket == 1024 else 1) > left:
            res.setdefault("skipped", []).append(f"{section} ({left:.0f}s left)")
            print("skip", section, flush=True)
            return False
        return True

    guarded = gt.guard(res, save)

    if "micro" in sections and device == "cuda" and room("micro"):
        seqs = tuple(int(s) for s in args.micro_seqs.split(","))
        res["micro"] = guarded("micro", lambda: micro(device, seqs))
        gc.collect()
        torch.cuda.empty_cache()
    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    if device == "cuda":
        _caption_without_cudnn_attention(pipe)
    image = sample_image(args.bucket, args.bucket, seed=0)
    params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps, layers=args.layers,
                             resolution=args.bucket)
    ref_latents = None
    if "ref" in sections and room("ref"):
        out = guarded("ref", lambda: reference_job(pipe, image, params, device))
        if out:
            res["ref"], ref_latents = out
            print("ref", res["ref"], flush=True)

    prev = None
    if "variants" in sections:
        res["variants"] = {}
        for name in args.variants.split(","):
            if not room("variant"):
                break
            out = guarded(f"variant {name}", lambda: variant(pipe, name, VARIANTS[name], image, params,
                                                             args.variant_steps, prev))
            if out:
                res["variants"][name], prev = out
                print("variant", name, res["variants"][name], flush=True)
        if prev is not None:
            prev.restore()
        torch._dynamo.reset()

    best = None
    if args.worker_options == "best" and res.get("variants"):
        best = min(res["variants"], key=lambda n: res["variants"][n].get("step_s") or 1e9)
        with open("/tmp/layerq_best_variant.txt", "w") as f:  # for a following call on the same machine
            f.write(best)
    elif args.worker_options in VARIANTS:
        best = args.worker_options
    if best is not None:
        res["worker_options_from"] = best
        defaults = SpeedOptions.for_device

        def for_device(device, _changes=VARIANTS[best]):  # bench only: the worker path with the best variant
            o = defaults(device)
            return o.replace(**_changes) if torch.device(device).type == "cuda" else o

        SpeedOptions.for_device = staticmethod(for_device)
        print("worker options from variant", best, flush=True)

    dp = None
    if "worker" in sections and room("worker"):
        def worker():
            nonlocal dp
            dp = DecomposePipeline(pipe=pipe, device=torch.device(device), dtype=pipe.transformer.dtype,
                                   model_id="synthetic", path="-")
            gt.reset_peak()
            g0 = _graphs()
            _, acc_s = gt.timed(dp._accelerate, not args.no_fast_captions, ((args.bucket, args.layers),))
            runner = dp.runner
            out = {"accelerate": {
                "total_s": round(acc_s, 1), "dp_warmup_s": round(dp.warmup_s, 1), "graphs": _graphs() - g0,
                "options": runner.options.describe(), "attention_backend": runner.attention_backend,
                "probes": [p.__dict__ for p in runner.attention_probes], **gt.peak_gib()}, "jobs": []}
            print("accelerate", out["accelerate"], flush=True)
            dp.runner = CapturingRunner(runner)
            lat = []
            for n in range(args.jobs):
                row, latents = worker_job(dp, image, params)
                row["rel_err_vs_ref"] = _err(latents, ref_latents)
                out["jobs"].append(row)
                lat.append(latents)
                print(f"worker job {n + 1}", row, flush=True)
                res["worker"] = out
                save()
            if len(lat) > 1:
                out["run_to_run_err"] = _err(lat[0], lat[1])
                out["first_over_steady"] = round(out["jobs"][0]["e2e_s"] / out["jobs"][-1]["e2e_s"], 3)
            return out

        res["worker"] = guarded("worker", worker)

    if "captions" in sections and dp is not None and room("captions"):
        def captions():
            images = [sample_image(args.bucket, args.bucket, seed=100 + i) for i in range(8)]
            cache = dp.runner.captioner._cache
            cache.clear()
            gt.sync()
            batch, batch_s = gt.timed(dp.caption_images, images, True, args.bucket)
            alone = {}
            for i in (0, 5):
                cache.clear()
                alone[i], alone_s = gt.timed(dp.caption_images, [images[i]], True, args.bucket)
            from worker.accel.caption_decode import layers_are_resident, text_parts

            out_decoders = [
                {"length": d.length, "batch": d.batch, "use_graph": d.use_graph, "graph": d.graph is not None,
                 "capture_attempts": d.capture_attempts, "capture_error": d.capture_error,
                 "capture_s": round(d.capture_s, 2), "steps": d.steps}
                for d in dp.runner.captioner._decoders.values()]
            resident = layers_are_resident(text_parts(pipe.text_encoder)[0].layers)
            print("caption decoders", out_decoders, "layers resident", resident, flush=True)
            steady = res.get("worker", {}).get("jobs", [{}])[-1].get("e2e_s")
            out = {"decoders": out_decoders, "layers_resident": resident, "batch_of_8_s": round(batch_s, 2), "per_job_s": round(batch_s / 8, 3),
                   "one_alone_s": round(alone_s, 2),
                   "alone_equals_batched": {i: alone[i][0] == batch[i] for i in alone},
                   "distinct_captions": len(set(batch)), "caption_chars": [len(c) for c in batch]}
            if steady:
                out["prompted_job_s"] = steady
                out["auto_captioned_in_queue_of_8_s"] = round(steady + batch_s / 8, 2)
                out["ratio_vs_prompted"] = round((steady + batch_s / 8) / steady, 4)
            print("captions", out, flush=True)
            return out

        res["captions"] = guarded("captions", captions)
        save()

    if "quality" in sections and dp is not None:
        res["quality"] = {}
        for q in args.qualities.split(","):
            if not room("quality"):
                break

            def one(q=q):
                calls = {"n": 0}
                transformer_forward = type(pipe.transformer).forward

                def counting(self, *a, **k):
                    calls["n"] += 1
                    return transformer_forward(self, *a, **k)

                type(pipe.transformer).forward = counting
                try:
                    row, latents = worker_job(dp, image, params.model_copy(update={"quality": q}))
                finally:
                    type(pipe.transformer).forward = transformer_forward
                row["transformer_calls"] = calls["n"]
                row["rel_err_vs_ref"] = _err(latents, ref_latents)
                return row

            res["quality"][q] = guarded(f"quality {q}", one)
            print("quality", q, res["quality"][q], flush=True)

    save()
    summary(res)
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


def summary(res: dict) -> None:
    print("\n== summary ==")
    ref = res.get("ref") or {}
    print(f"ref: e2e {ref.get('e2e_s')} s, step {ref.get('step_s')} s")
    for name, row in (res.get("variants") or {}).items():
        print(f"variant {name:18s} step {row.get('step_s')} s  backend {row.get('backend')}  graphs {row.get('graphs_in_run')}")
    for i, row in enumerate((res.get("worker") or {}).get("jobs", [])):
        print(f"worker job {i + 1}: e2e {row.get('e2e_s')} s step {row.get('step_s')} err {row.get('rel_err_vs_ref')} "
              f"peak {row.get('allocated_gib')}/{row.get('reserved_gib')} GiB graphs {row.get('graphs_compiled')}")
    for q, row in (res.get("quality") or {}).items():
        if row:
            print(f"quality {q}: e2e {row.get('e2e_s')} s calls {row.get('transformer_calls')} err {row.get('rel_err_vs_ref')}")
    if res.get("errors"):
        print("errors:", {k: v[:300] for k, v in res["errors"].items()})


if __name__ == "__main__":
    raise SystemExit(main())
