"""Memory plans on a capped GPU (issue 17): the worker's own path at 46, 22 and 14 GiB against full memory.

One process, one build of the full-size synthetic model (worker.accel.synthetic), in this order; every
row is saved as soon as it exists, and a section that would end after --budget-s is skipped:

  full      `DecomposePipeline.place` (plan `full` on this card) + `_accelerate` (the worker's CUDA
            speed-ups: regional compile, attention probe, warm-up of 640x4), then the worker's jobs:
            640/4 with a prompt (--steps), 640/4 auto-captioned (--caption-steps; exact caption),
            1024/4 with a prompt (--steps-1024)
  caps      the same pipeline re-placed by `worker.block_streaming.PlacedPipeline` under the plan
            `choose_plan(cap)` picks, with `torch.cuda.set_per_process_memory_fraction(cap / card)`,
            for each of --caps: the same two 640 jobs; then 1024/4 at --cap-1024
  halved    --halved-caps: the 640 prompt job again with every host→device copy of the streamed
            weights made twice (the first copy thrown away), i.e. at about half the copy rate: what a
            PCIe 4.0 card's ~25 GB/s does to the same compute
  copy      host→device copy rate, pinned and pageable (for the PCIe 4.0 estimate)

Per job: wall time, median step (CUDA events), bytes copied host→device, peak allocated/reserved,
graphs compiled during the job, relative error of the final latents against the full-memory job of
the same bucket and steps (same seed), and the caption's time and text hash for captioned jobs. A
50-step figure is extrapolated as e2e + (50 − steps) × median step (steps are steady; GPU_NOTES).

With --capped-captions: auto-captioned jobs at the caps with 8 captions batched in the plan's caption
phase (bench/capped_captions_gpu.py).

With --fp8 the script measures FP8 weights for `quality=fast` jobs instead (bench/memory_plans_fp8.py:
full memory and --caps, fast FP8 vs fast bf16, and an exact job's bitwise identity on an FP8 worker).

  PYTHONUNBUFFERED=1 python bench/memory_plans_gpu.py --size full --out $OUT
  PYTHONUNBUFFERED=1 python bench/memory_plans_gpu.py --capped-captions --size full --caps 14,22 --out $OUT
  PYTHONUNBUFFERED=1 python bench/memory_plans_gpu.py --fp8 --size full --steps 20 --budget-s 250 --out $OUT
  python bench/memory_plans_gpu.py --size tiny --steps 2 --caption-steps 2 --steps-1024 2 --out /tmp/mp  # CPU check
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from bench.worker_path_gpu import CapturingRunner, _err, _graphs, _step_row, accelerate  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.block_streaming import PlacedPipeline  # noqa: E402
from worker.memory_plan import GIB, ModelFootprint, choose_plan  # noqa: E402
from worker.pipeline import DecomposePipeline  # noqa: E402

PCIE4_BYTES_PER_S = 25e9


def copy_rates(device: str) -> dict:
    """Host→device GB/s for a 2 GiB tensor, pinned and pageable (median of 5)."""
    if device != "cuda":
        return {}
    out = {}
    for pinned in (True, False):
        host = torch.empty(GIB, dtype=torch.bfloat16, pin_memory=pinned)
        dev = torch.empty(GIB, dtype=torch.bfloat16, device="cuda")
        times = []
        for _ in range(6):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dev.copy_(host, non_blocking=pinned)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000)
        times = sorted(times[1:])
        out["pinned_gb_s" if pinned else "pageable_gb_s"] = round(2 * GIB / times[len(times) // 2] / 1e9, 1)
        del host, dev
    torch.cuda.empty_cache()
    return out


def cpu_budget(fp: ModelFootprint, buckets, cap: float) -> int:
    """On a CPU check, a budget that keeps about cap/64 of the blocks resident (the GPU caps' shape)."""
    from worker.memory_plan import MARGIN_BYTES, MARGIN_FRACTION, MemoryPlan

    probe = MemoryPlan("partial", 0, fp, buckets[-1])
    keep = round(fp.transformer_blocks * min(1.0, cap / 64))
    usable = max(probe.denoise_reserve(*b) for b in buckets) + keep * fp.transformer_block_bytes
    return int((usable + MARGIN_BYTES) / (1 - MARGIN_FRACTION)) + 1


def halve_copy_rate(copier) -> None:
    """Every host→device copy goes over the bus twice (the first copy is thrown away): the copy engine
    then moves the weights at about half this card's rate, as a PCIe 4.0 x16 card would."""
    copy = copier.copy

    def twice(host):
        if copier.stream is not None:
            with torch.inference_mode(False), torch.no_grad(), torch.cuda.stream(copier.stream):
                host.to(copier.device, non_blocking=True)  # freed at once; reuse is ordered on this stream
        return copy(host)

    copier.copy = twice


class CaptionTimer:
    """Times FastDecomposer.caption (the caption phase, swap included) and keeps the text's hash."""

    def __init__(self, runner):
        self.runner, self.seconds, self.digest = runner, None, None
        self._caption = runner.caption

    def __call__(self, *args, **kwargs):
        gt.sync()
        t0 = time.perf_counter()
        text = self._caption(*args, **kwargs)
        gt.sync()
        self.seconds = time.perf_counter() - t0
        self.digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return text


def place_under_cap(dp: DecomposePipeline, pipe, placement: PlacedPipeline | None, plan, cap: float,
                    total: int | None, dev: torch.device, fp8: bool = False) -> tuple[PlacedPipeline, dict]:
    """Put `plan` in force on the worker pipeline `dp` and cap the process at `cap` GiB (CUDA). The first
    plan places the model (and with `fp8` pins the FP8 copy beside it); later ones re-plan the same
    placement. Returns the placement and the first placement's timings (`place_s`, `place_fp8_s`).
    The cache is emptied after everything moved and before the cap: blocks freed by the move (the
    full-memory weights, an FP8 copy made on the GPU) would otherwise stay reserved under the cap
    (a 14 GiB FP8 job once read 19.5 GiB reserved, 2026-12-02)."""
    timings = {}
    if placement is None:
        placement, place_s = gt.timed(PlacedPipeline, pipe, plan, dev)
        timings["place_s"] = round(place_s, 1)
        if fp8:
            timings["place_fp8_s"] = round(gt.timed(placement.enable_fp8)[1], 1)
    else:
        placement.replan(plan)
    dp.placement, dp.memory_plan = placement, plan.describe()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * GIB / total))
    return placement, timings


def run_job(dp: DecomposePipeline, image, params: DecomposeParams, ref=None, steps_to: int = 50) -> tuple[dict, object]:
    placement = dp.placement
    copied0 = placement.copier.bytes_copied if placement else 0
    fast = dp.runner.runner  # CapturingRunner → FastDecomposer
    timer = None
    if not params.prompt.strip():
        fast.captioner._cache.clear()  # every captioned job writes its caption
        timer = fast.caption = CaptionTimer(fast)
    gt.reset_peak()
    g0 = _graphs()
    try:
        layers, seconds = gt.timed(dp.run, image, params)
    finally:
        if timer is not None:
            del fast.caption
    rec = dp.runner.last
    row = {"e2e_s": round(seconds, 2), **_step_row(rec), "graphs_compiled": _graphs() - g0, "layers_out": len(layers),
           **gt.peak_gib()}
    if placement is not None:
        row["copied_gb"] = round((placement.copier.bytes_copied - copied0) / 1e9, 2)
    if timer is not None:
        row["caption_s"] = round(timer.seconds, 2)
        row["caption_sha"] = timer.digest
    if row.get("step_s") and params.num_inference_steps < steps_to:
        row[f"e2e_{steps_to}_s_extrapolated"] = round(seconds + (steps_to - params.num_inference_steps) * row["step_s"], 2)
    row["rel_err_vs_full"] = _err(rec.latents, ref) if ref is not None else None
    return row, rec.latents


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full")
    ap.add_argument("--steps", type=int, default=20, help="steps of the 640 prompt jobs")
    ap.add_argument("--caption-steps", type=int, default=2, help="steps of the auto-captioned jobs")
    ap.add_argument("--steps-1024", type=int, default=6)
    ap.add_argument("--caps", default="46,22,14", help="GiB, comma-separated")
    ap.add_argument("--cap-1024", type=float, default=46.0, help="0 skips the 1024 bucket")
    ap.add_argument("--halved-caps", default="", help="GiB, comma-separated: 640 prompt jobs at half the copy rate")
    ap.add_argument("--halved-steps", type=int, default=20)
    ap.add_argument("--no-captions", action="store_true", help="skip the auto-captioned jobs")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--fp8", action="store_true", help="fast jobs with FP8 weights vs bf16 (memory_plans_fp8.py)")
    ap.add_argument("--capped-captions", action="store_true",
                    help="8 captions batched at each of --caps, then one job with the caption handed over")
    ap.add_argument("--prompted-at-caps", action="store_true", help="--capped-captions: the prompted job at caps too")
    ap.add_argument("--cap-estimate-s", type=float, default=150, help="--capped-captions: skip a cap with less left")
    args = ap.parse_args(argv)
    if args.capped_captions:
        from bench.capped_captions_gpu import main as capped_main

        return capped_main(args)
    if args.fp8:
        from bench.memory_plans_fp8 import main as fp8_main

        return fp8_main(args)
    t_start, device, res = gt.start(args)
    res["jobs"] = []

    save = gt.saver(res, os.path.join(args.out, "memory_plans.json"), t_start)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    res["copy"] = copy_rates(device)
    print("copy", res["copy"], flush=True)
    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    dev = torch.device(device)
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    free = torch.cuda.mem_get_info()[0] if device == "cuda" else None
    fp = ModelFootprint.from_pipeline(pipe)
    res["footprint_gib"] = {k: round(v / GIB, 3) for k, v in vars(fp).items() if k.endswith("bytes")}
    dp = DecomposePipeline.place(pipe, dev, pipe.transformer.dtype, model_id="synthetic", path="-",
                                 card_free_bytes=(total if device == "cuda" else None))
    res["full_plan"] = dp.memory_plan
    g0 = _graphs()
    acc_s = accelerate(dp, False, caption_cache_entries=16)
    res["accelerate"] = {"s": round(acc_s, 1), "graphs": _graphs() - g0, "options": dp.runner.options.describe(),
                         "attention": dp.runner.attention_backend, **gt.peak_gib()}
    print("accelerate", res["accelerate"], flush=True)
    dp.runner = CapturingRunner(dp.runner)
    save()

    img = sample_image(640, 640, seed=0)
    cap_img = sample_image(640, 480, seed=1)
    p640 = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)
    pcap = DecomposeParams(prompt="", seed=SEED, num_inference_steps=args.caption_steps)
    p1024 = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps_1024, resolution=1024)
    phalf = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.halved_steps)
    refs: dict[tuple, object] = {}

    def job(label: str, cap, params, image, est_s: float) -> None:
        ref_key = (label.split(",")[0], params.num_inference_steps)  # same bucket and steps, full memory
        if left() < est_s:
            res["jobs"].append({"label": label, "cap_gib": cap, "skipped": f"{left():.0f} s left"})
            print("skip", label, flush=True)
            return
        try:
            row, lat = run_job(dp, image, params, refs.get(ref_key))
        except Exception as exc:  # noqa: BLE001 - keep the other rows
            traceback.print_exc()
            row, lat = {"error": f"{type(exc).__name__}: {exc}"[:1500]}, None
        if cap is None and lat is not None:
            refs[ref_key] = lat
        row = {"label": label, "cap_gib": cap, "plan": dp.memory_plan.get("name"), **row}
        res["jobs"].append(row)
        print(row, flush=True)
        save()

    job("640 prompt", None, p640, img, 60)
    if not args.no_captions:
        job("640 caption", None, pcap, cap_img, 40)
    if args.cap_1024:
        job("1024 prompt", None, p1024, img, 60)
    if args.halved_caps and args.halved_steps != args.steps:
        job("640 prompt", None, phalf, img, 30)  # the reference for the halved-rate jobs' error

    placement = None
    plans = [(float(c), ((640, 4),)) for c in args.caps.split(",") if c.strip()]
    if args.cap_1024:
        plans.append((args.cap_1024, ((640, 4), (1024, 4))))
    for cap, buckets in plans:
        budget = int(cap * GIB) if device == "cuda" else cpu_budget(fp, buckets, cap)
        plan = choose_plan(budget, fp, buckets, device_type=device, source="cap")
        placement, timings = place_under_cap(dp, pipe, placement, plan, cap, total, dev)
        res.update(timings)
        res.setdefault("plans", {})[f"{cap:g} {buckets}"] = plan.describe()
        print("plan", cap, plan.describe(), flush=True)
        if buckets == ((640, 4),):
            job("640 prompt", cap, p640, img, 90)
            if not args.no_captions:
                job("640 caption", cap, pcap, cap_img, 70)
        else:
            job("1024 prompt", cap, p1024, img, 60)
        save()
    halved = [float(c) for c in args.halved_caps.split(",") if c.strip()]
    if halved and placement is not None:
        halve_copy_rate(placement.copier)
        for cap in halved:
            plan = choose_plan(int(cap * GIB) if device == "cuda" else cpu_budget(fp, ((640, 4),), cap), fp,
                               ((640, 4),), device_type=device, source="cap")
            placement.replan(plan)
            dp.memory_plan = plan.describe()
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * GIB / total))
            job("640 prompt, copy rate halved", cap, phalf, img, 30 + 3 * args.halved_steps)
    res["free_at_start_gib"] = round(free / GIB, 2) if free else None
    save()
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
