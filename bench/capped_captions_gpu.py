"""Auto-captioned jobs on capped workers (issue 17: ≤ 2× the full-memory worker path at 14 GiB), with the
batch-invariant captioner batching 8 captions in the memory plan's caption phase. One process, one
build of the full-size synthetic model; run through `bench/memory_plans_gpu.py --capped-captions`.

  full   `DecomposePipeline.place` (plan `full`) + `_accelerate(fast_captions=True)` as a worker holds
         it; the 640/4 prompted job (--steps; the reference), the 8 images captioned in one
         `caption_images` call (CUDA-graph decode), then one job with the first caption handed over.
  caps   for each of --caps: the same pipeline re-placed by `PlacedPipeline` under `choose_plan(cap)`,
         the process capped (`set_per_process_memory_fraction`); the 8 images captioned in one
         `caption_images` call (caption phase: eager decode through the streamed text layers), then one
         job with the first caption handed over (what a worker does for a queue of 8 auto-caption
         jobs: worker/caption_ahead.py); with --prompted-at-caps, the prompted job too.

Per cap: the batch's seconds, bytes copied and peak; whether the 8 captions are the full-memory
worker's (token for token: same text); the job's e2e, median step and its 50-step extrapolation; and
the ratio target: (batch / 8 + job at 50 steps) / (full-memory prompted job at 50 steps).

  PYTHONUNBUFFERED=1 python bench/memory_plans_gpu.py --capped-captions --size full --caps 14,22 --out $OUT
  python bench/memory_plans_gpu.py --capped-captions --size tiny --steps 2 --caps 14 --out /tmp/cc  # CPU check
"""

from __future__ import annotations

import os
import time
import traceback

import torch

from bench import gpu_timing as gt
from bench.bench_sections import PROMPT, SEED
from bench.worker_path_gpu import CapturingRunner, _err, _step_row, accelerate
from layerq.params import DecomposeParams
from worker.accel.synthetic import build_pipeline, sample_image
from worker.memory_plan import GIB, ModelFootprint, choose_plan
from worker.pipeline import DecomposePipeline

SHAPES = ((640, 640), (640, 480), (480, 640), (600, 600), (700, 500), (512, 640), (640, 560), (560, 640))


def _job(dp: DecomposePipeline, image, params: DecomposeParams, caption=None, ref=None) -> tuple[dict, object]:
    placement = dp.placement
    copied0 = placement.copier.bytes_copied if placement else 0
    gt.reset_peak()
    layers, seconds = gt.timed(dp.run, image, params, caption=caption)
    rec = dp.runner.last
    row = {"e2e_s": round(seconds, 2), **_step_row(rec), "layers_out": len(layers), **gt.peak_gib()}
    if placement is not None:
        row["copied_gb"] = round((placement.copier.bytes_copied - copied0) / 1e9, 2)
    if row.get("step_s"):
        row["e2e_50_s"] = round(seconds + (50 - params.num_inference_steps) * row["step_s"], 2)
    row["rel_err_vs_full"] = _err(rec.latents, ref) if ref is not None else None
    return row, rec.latents


def _captions(dp: DecomposePipeline, images) -> tuple[dict, list[str]]:
    captioner = dp.runner.captioner
    captioner._cache.clear()  # every call really captions
    placement = dp.placement
    copied0 = placement.copier.bytes_copied if placement else 0
    batches0 = captioner.generate_calls
    gt.reset_peak()
    texts, seconds = gt.timed(dp.caption_images, images, True, 640)
    row = {"batch_s": round(seconds, 2), "per_image_s": round(seconds / len(images), 2),
           "decode_batches": captioner.generate_calls - batches0, **gt.peak_gib()}
    if placement is not None:
        row["copied_gb"] = round((placement.copier.bytes_copied - copied0) / 1e9, 2)
        row["text_layers_resident"] = {"prefill": placement.plan.caption_text_layers,
                                       "decode": placement.plan.decode_text_layers}
    return row, texts


def main(args) -> int:
    from bench.memory_plans_gpu import place_under_cap  # lazy: that script imports this one

    t_start, device, res = gt.start(args)
    out_path = os.path.join(args.out, "capped_captions.json")

    save = gt.saver(res, out_path, t_start)

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    dev = torch.device(device)
    total = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else None
    fp = ModelFootprint.from_pipeline(pipe)
    res["footprint_gib"] = {k: round(v / GIB, 3) for k, v in vars(fp).items() if k.endswith("bytes")}
    dp = DecomposePipeline.place(pipe, dev, pipe.transformer.dtype, model_id="synthetic", path="-",
                                 card_free_bytes=total)
    acc_s = accelerate(dp, True, caption_cache_entries=16, caption_batch_invariant=True)  # CPU: invariant captions on
    res["accelerate"] = {"s": round(acc_s, 1), "options": dp.runner.options.describe()}
    dp.runner = CapturingRunner(dp.runner)
    save()

    images = [sample_image(w, h, seed=i) for i, (w, h) in enumerate(SHAPES)]
    prompted = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)
    auto = DecomposeParams(prompt="", seed=SEED, num_inference_steps=args.steps)
    rows = res["rows"] = []

    def record(label: str, cap, fn, *a, **kw):
        try:
            row, value = fn(*a, **kw)
        except Exception as exc:  # noqa: BLE001 - keep the other rows
            traceback.print_exc()
            row, value = {"error": f"{type(exc).__name__}: {exc}"[:1500]}, None
        row = {"label": label, "cap_gib": cap, "plan": dp.memory_plan.get("name"), **row}
        rows.append(row)
        print(row, flush=True)
        save()
        return row, value

    full_prompted, ref = record("640 prompt", None, _job, dp, images[0], prompted)
    full_caps, full_texts = record("8 captions", None, _captions, dp, images)
    auto_ref = None
    if full_texts:
        _, auto_ref = record("640 auto, caption handed over", None, _job, dp, images[0], auto, full_texts[0])
    base = full_prompted.get("e2e_50_s")

    placement = None
    dp.runner.captioner._decoders.clear()  # the full-memory decoders (graph, KV buffers) are not used again
    for cap in [float(c) for c in args.caps.split(",") if c.strip()]:
        if left() < args.cap_estimate_s:
            rows.append({"label": "cap", "cap_gib": cap, "skipped": f"{left():.0f} s left"})
            save()
            continue
        budget = int(cap * GIB) if device == "cuda" else _cpu_budget(fp, cap)
        plan = choose_plan(budget, fp, ((640, 4),), device_type=device, source="cap")
        placement, _ = place_under_cap(dp, pipe, placement, plan, cap, total, dev)
        res.setdefault("plans", {})[f"{cap:g}"] = plan.describe()
        caps_row, texts = record("8 captions", cap, _captions, dp, images)
        if texts:
            caps_row["same_as_full"] = [a == b for a, b in zip(texts, full_texts or [])]
            # Against the full-memory job with the same caption (a different caption: not comparable).
            same = bool(full_texts) and texts[0] == full_texts[0]
            job_row, _ = record("640 auto, caption handed over", cap, _job, dp, images[0], auto, texts[0],
                                ref=auto_ref if same else None)
            if base and job_row.get("e2e_50_s"):
                job_row["per_job_50_s"] = round(caps_row["batch_s"] / len(images) + job_row["e2e_50_s"], 2)
                job_row["ratio_vs_full_prompted"] = round(job_row["per_job_50_s"] / base, 3)
            if args.prompted_at_caps:
                record("640 prompt", cap, _job, dp, images[0], prompted, ref=ref)
        save()
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


def _cpu_budget(fp: ModelFootprint, cap: float) -> int:
    from bench.memory_plans_gpu import cpu_budget

    return cpu_budget(fp, ((640, 4),), cap)
