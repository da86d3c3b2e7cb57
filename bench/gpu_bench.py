"""GPU benchmark: the authors' Qwen-Image-Layered call against layerq's fast path, in one process.

Builds the full-size pipeline with random bf16 weights on the GPU (worker/accel/synthetic.py), then runs the
sections named by --sections on the same inputs and seeds:

  ref        the authors' call with a prompt (50 steps): per-step time, end-to-end, peak memory,
             host syncs inside the loop; its final latents are the reference for every error below
  fast       prepare() + warm-up, then the same job twice: first job vs steady state, error vs ref
  ablate     per-step time of each transformer switch alone (eager/compiled x attention backend)
  lossy      fewer steps and step caching: time and error vs the 50-step reference
  refcap     the authors' call with an empty prompt (auto-caption): caption time, tokens
  captions   fast captions at batch 1 and 8: time per job, tokens vs the reference caption
  autocap    fast job with auto-caption; a queue of 8 (one batched caption + cached captions)
  fp8        FP8 transformer weights (lossy, irreversible: runs last)

Error measure: ‖fast − ref‖₂ / ‖ref‖₂ over the final packed latents (the denoising loop's output,
before the VAE), captured with a step callback. Times are wall-clock with the GPU drained before and
after; per-step times are CUDA events between consecutive step callbacks (median).

  python bench/gpu_bench.py --size full --sections ref,fast,ablate,lossy --out $OUT
  python bench/gpu_bench.py --size small --steps 3 --caption-tokens 16      # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import SECTIONS, Context  # noqa: E402
from worker.accel.synthetic import build_pipeline  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--sections", default="ref,fast,ablate,lossy")
    ap.add_argument("--steps", type=int, default=50, help="denoising steps of a full job")
    ap.add_argument("--ablate-steps", type=int, default=6, help="steps per ablation variant (timed: all but the first)")
    ap.add_argument("--caption-tokens", type=int, default=512)
    ap.add_argument("--attention", default="auto", help='backend for the fast path ("auto", a name, or "none")')
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--cuda-graphs", action="store_true")
    ap.add_argument("--budget-s", type=float, default=560, help="skip sections that would start after this")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)

    t_start, device, results = gt.start(args)

    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    results["build"] = {"seconds": round(build_s, 1), **_weights_gib(pipe)}
    print("build", results["build"], flush=True)
    ctx = Context(pipe=pipe, args=args, device=device, results=results)

    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            results.setdefault("skipped", []).append(name)
            print(f"== skip {name}: {elapsed:.0f}s elapsed", flush=True)
            continue
        print(f"== {name} (t={elapsed:.0f}s)", flush=True)
        gt.reset_peak()
        t0 = time.perf_counter()
        try:
            results[name] = SECTIONS[name](ctx)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        results[name]["section_s"] = round(time.perf_counter() - t0, 1)
        results[name]["peak"] = gt.peak_gib()
        print(name, json.dumps(results[name], default=str), flush=True)
        _save(args.out, results)
    results["total_s"] = round(time.perf_counter() - t_start, 1)
    _save(args.out, results)
    from bench.bench_report import summary

    print(summary(results), flush=True)
    return 0


def _weights_gib(pipe) -> dict:
    out = {}
    for name in ("transformer", "text_encoder", "vae"):
        mod = getattr(pipe, name)
        n = sum(p.numel() for p in mod.parameters())
        out[f"{name}_params_b"] = round(n / 1e9, 2)
    if torch.cuda.is_available():
        out["allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    return out


def _save(out_dir: str, results: dict) -> None:
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    raise SystemExit(main())
