"""Is an `exact` job bitwise the same on two workers? Compile-to-compile reproducibility on one GPU.

A worker compiles the transformer block once at start; Inductor then picks launch configurations of its
generated reductions (norms, softmax-free sums) by timing them on the card (runtime autotuning, and the
coordinate-descent tuning our `compile_tune_kernels` turns on), and the attention probe picks a backend
by timing. Timings vary, so two workers, or one worker before and after a restart, may compile kernels
that sum in another order: the same job would then differ in its last bits. Memory run 4 saw 1.3e-2
between two compiles in one process (bench/GPU_NOTES.md); this script measures it directly. Since
2026-12-02 the worker compiles in Inductor's deterministic mode (`SpeedOptions.compile_deterministic`)
and keeps a fixed preference among attention backends of similar speed (worker/accel/attention.py).

One process, one build of the full-size synthetic model, the worker path (`DecomposePipeline.place` +
`_accelerate`, warm-up 640x4), then for each of --variants, in order: the speed-ups undone, dynamo
reset, Inductor's on-disk caches off (each compile tunes afresh, as on another machine), compile and
warm up again, and one exact 640/4 job with a prompt (--steps). The first variant's job runs twice (the
run-to-run control). Variants:

  default        the worker's compile as it is (deterministic mode on, since 2026-12-02)
  tuned          the same with `compile_deterministic` off: kernels chosen by timing (the worker before)
  fp8-worker     the FP8 copy made before the compile, as a worker with `LAYERQ_FP8_FAST` does; its exact
                 job must be bitwise a `default` one, with no graph compiled in the job

Per variant: compile + warm-up seconds, the attention backend chosen, the exact job's step and e2e time,
and its latents against the first `default` job (bitwise, relative error) and against the previous job
of the same variant.

  PYTHONUNBUFFERED=1 python bench/compile_repro_gpu.py --size full --out $OUT
  python bench/compile_repro_gpu.py --size tiny --steps 2 --out /tmp/cr   # CPU check (no compile)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from bench.worker_path_gpu import CapturingRunner, _err, _graphs, accelerate, worker_job  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.pipeline import DecomposePipeline  # noqa: E402

VARIANTS = ("default", "tuned", "fp8-worker")


@contextlib.contextmanager
def fresh_inductor():
    """Inductor with no cache to reuse (a new cache folder, the FX-graph and autotune caches off), for
    one compile and the jobs that follow it: each compile chooses afresh, as on another machine."""
    import torch._inductor.config as cfg

    patch = {"fx_graph_cache": False, "autotune_local_cache": False}
    patch = {k: v for k, v in patch.items() if hasattr(cfg, k)}
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache_dir, cfg.patch(patch):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


@contextlib.contextmanager
def worker_options(deterministic: bool):
    """The worker's speed options (`SpeedOptions.for_device`, what `_accelerate` asks for) with
    `compile_deterministic` as given."""
    from worker.accel.options import SpeedOptions

    original = SpeedOptions.__dict__["for_device"]  # the classmethod itself, put back as it was

    def patched(cls, device):
        return original.__func__(cls, device).replace(compile_deterministic=deterministic)

    SpeedOptions.for_device = classmethod(patched)
    try:
        yield
    finally:
        SpeedOptions.for_device = original


def compile_variant(dp: DecomposePipeline | None, pipe, variant: str, dev: torch.device, total) -> tuple:
    """Undo the previous compile (if any), place the pipeline as a worker does where the variant needs
    it (the FP8 copy is made at placement), and compile + warm up (inside `fresh_inductor` and
    `worker_options`, which the variant's jobs run under too). Returns the pipeline and its row so far."""
    row: dict = {"variant": variant}
    if dp is not None:
        dp.runner.restore()
        torch._dynamo.reset()
    if dp is None or variant == "fp8-worker":
        dp = DecomposePipeline.place(pipe, dev, pipe.transformer.dtype, model_id="synthetic", path="-",
                                     card_free_bytes=total, fp8_fast="on" if variant == "fp8-worker" else "off")
        row["fp8_modules"] = len(dp.fp8_modules)
    g0 = _graphs()
    acc_s = accelerate(dp, False)
    row.update(compile_warmup_s=round(acc_s, 1), graphs=_graphs() - g0,
               deterministic=getattr(dp.runner.options, "compile_deterministic", None),
               attention_backend=str(getattr(dp.runner, "attention_backend", None)))
    return dp, row


def compared(lat: torch.Tensor, ref: torch.Tensor | None, name: str) -> dict:
    """Bitwise equality and relative error of `lat` against `ref` (nothing where there is no ref)."""
    if ref is None or ref is lat:
        return {}
    return {f"bitwise_equal_to_{name}": bool(torch.equal(lat, ref)), f"rel_err_vs_{name}": _err(lat, ref)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--variants", default="default,default,fp8-worker,tuned,tuned")
    ap.add_argument("--budget-s", type=float, default=540, help="start a variant only with ~70 s left")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    t_start, device, res = gt.start(args)
    save = gt.saver(res, os.path.join(args.out, "compile_repro.json"), t_start)
    dev = torch.device(device)

    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    image = sample_image(640, 640, seed=0)
    params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)
    res["variants"] = []
    first: torch.Tensor | None = None
    last_of: dict[str, torch.Tensor] = {}
    dp: DecomposePipeline | None = None
    for n, variant in enumerate(variants):
        if args.budget_s - (time.perf_counter() - t_start) < 70:
            res["variants"].append({"variant": variant, "skipped": "time budget"})
            break
        row: dict = {"variant": variant}
        try:
            with fresh_inductor(), worker_options(variant != "tuned"):
                dp, row = compile_variant(dp, pipe, variant, dev, total)
                dp.runner = CapturingRunner(dp.runner)
                for key in ("job", "job_again")[: 2 if n == 0 else 1]:  # the first variant's job twice
                    job, lat = worker_job(dp, image, params)
                    first = lat if first is None else first
                    row[key] = {k: job[k] for k in ("e2e_s", "step_s", "graphs_compiled", "allocated_gib") if k in job}
                    row[key].update(compared(lat, first, "first"))
                    row[key].update(compared(lat, last_of.get(variant), "previous_same_variant"))
                    last_of[variant] = lat
                dp.runner = dp.runner.runner
        except Exception as exc:  # noqa: BLE001 - keep the variants measured so far
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"[:1500]
        res["variants"].append(row)
        print(json.dumps(row), flush=True)
        save()
    save()
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
