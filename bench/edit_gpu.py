"""The edit model on one GPU: the authors' call against the worker's path, in one process (issue 9, item 6).

Model: `build_edit("full")`, Qwen-Image-Edit-2509's architecture (20.4 B transformer, Qwen2.5-VL text
encoder, RGB VAE) with random weights, built on the GPU in bf16. Input: a 640x640 RGBA layer (a picture
with a soft-edged disc of alpha), composited over the authors' green (30, 215, 96); the pipeline renders at
1024x1024 (by area). Same prompt, seed 777, 50 steps, true CFG 4.0, negative prompt " " in both paths.

  ref     the authors' call (`src/tool/edit_rgba_image.py` in QwenLM/Qwen-Image-Layered): their
          `blend_with_green_bg`, then `pipe(image, prompt=…, negative_prompt=" ", num_inference_steps=50,
          generator=torch.Generator(device).manual_seed(777), true_cfg_scale=4.0, num_images_per_prompt=1)`
          on the plain pipeline. One 2-step call first (CUDA/cuBLAS start-up), then --ref-jobs timed jobs.
  worker  what an edit worker does: `worker.accel.editor.prepare_edit(pipe)` (the switches of
          `SpeedOptions.for_device("cuda")` that apply, then the warm-up), then --jobs calls of
          `worker.edit.edit_layer` (which composites, calls the pipeline, resizes back and mattes).
  sdpa    (if the budget allows and FA4 was picked) the worker path again with attention "native"
          (SDPA's own kernel), one job: the number for machines without the optional FA4 package.

Seconds per job are end to end (device drained before and after), seconds per CFG step the median of the
CUDA-event times between step callbacks (steps 1..49; step 0 also holds the prompt encoding's tail). The
final latents (after the last scheduler step, packed) are taken in a step callback: in the authors' call
one is passed, in `edit_layer` a thin proxy around the pipeline chains a recorder in front of the worker's
own callback. Error: ‖worker − ref‖ / ‖ref‖ over the final latents.

  PYTHONUNBUFFERED=1 python3 bench/edit_gpu.py --size full --out $OUT
  python bench/edit_gpu.py --size tiny --device cpu --steps 2 --out /tmp/edit-gpu     # CPU check
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.worker_path_gpu import _err, _graphs, _step_row  # noqa: E402

PROMPT = "Make the disc deep blue and add a thin white outline around it"
SEED = 777
GREEN = (30, 215, 96)  # the authors' backdrop
EST = {"build": 30, "ref": 50, "prepare": 60, "job": 40}


def source_layer(size: int = 640):
    """A 640x640 RGBA layer: the benchmark picture inside a disc with a soft alpha edge, clear outside."""
    import numpy as np
    from PIL import Image

    from worker.accel.synthetic import sample_image

    rgba = np.array(sample_image(size, size, seed=3))
    y, x = np.mgrid[0:size, 0:size]
    r = np.hypot(x - size / 2, y - size / 2)
    rgba[..., 3] = (np.clip((size * 0.4 - r) / 6 + 0.5, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def blend_with_green_bg(layer):
    """The authors' composite, as written in their edit tool."""
    from PIL import Image

    bg = Image.new("RGB", layer.size, GREEN).convert("RGBA")
    return Image.alpha_composite(bg, layer.convert("RGBA")).convert("RGB")


class CapturingPipe:
    """The pipeline, unchanged, with a step recorder chained before the caller's step callback."""

    def __init__(self, pipe):
        self._pipe = pipe
        self.last: gt.StepRecorder | None = None
        self.call_s: float | None = None

    def __call__(self, *args, callback_on_step_end=None, **kwargs):
        rec = gt.StepRecorder()

        def chained(pipe, i, t, cb_kwargs):
            rec(pipe, i, t, cb_kwargs)
            return callback_on_step_end(pipe, i, t, cb_kwargs) if callback_on_step_end else cb_kwargs

        self.last = rec
        out, self.call_s = gt.timed(self._pipe, *args, callback_on_step_end=chained, **kwargs)
        return out

    def __getattr__(self, name):
        return getattr(self._pipe, name)


def _phase_times(rec: gt.StepRecorder, t0: float, t1: float) -> dict:
    """Host time before the first step callback (encode + step 0) and after the last (decode + post)."""
    if not rec.host_times:
        return {}
    return {"before_first_step_s": round(rec.host_times[0] - t0, 2),
            "after_last_step_s": round(t1 - rec.host_times[-1], 2)}


def reference_job(pipe, layer, steps: int, device: str) -> tuple[dict, torch.Tensor | None]:
    rec = gt.StepRecorder()
    gt.reset_peak()
    gt.sync()
    t0 = time.perf_counter()
    image = blend_with_green_bg(layer)
    out = pipe(image, prompt=PROMPT, negative_prompt=" ", num_inference_steps=steps,
               generator=torch.Generator(device=device).manual_seed(SEED), true_cfg_scale=4.0,
               num_images_per_prompt=1, callback_on_step_end=rec)
    gt.sync()
    t1 = time.perf_counter()
    row = {"e2e_s": round(t1 - t0, 2), **_step_row(rec), **_phase_times(rec, t0, t1),
           "output_size": list(out.images[0].size), **gt.peak_gib()}
    return row, rec.latents


def worker_job(pipe, layer, steps: int) -> tuple[dict, torch.Tensor | None]:
    from worker.edit import edit_layer

    proxy = CapturingPipe(pipe)
    counts: list[tuple[int, int]] = []
    gt.reset_peak()
    g0 = _graphs()
    gt.sync()
    t0 = time.perf_counter()
    out = edit_layer(proxy, layer, PROMPT, negative_prompt=" ", true_cfg_scale=4.0, num_inference_steps=steps,
                     seed=SEED, on_step=lambda i, n: counts.append((i, n)))
    gt.sync()
    t1 = time.perf_counter()
    rec = proxy.last
    row = {"e2e_s": round(t1 - t0, 2), "pipeline_call_s": round(proxy.call_s, 2), **_step_row(rec),
           **_phase_times(rec, t0, t1), "graphs_compiled": _graphs() - g0, "on_step_calls": len(counts),
           "last_on_step": counts[-1] if counts else None, "output": [out.mode, *out.size], **gt.peak_gib()}
    return row, rec.latents


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--ref-jobs", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=2, help="worker jobs after the warm-up")
    ap.add_argument("--sections", default="ref,worker,sdpa")
    ap.add_argument("--budget-s", type=float, default=540)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    t_start, _, res = gt.start(args)
    device = args.device
    sections = args.sections.split(",")
    path = os.path.join(args.out, "edit_gpu.json")
    scale = 1.0 if args.size == "full" else 0.05

    save = gt.saver(res, path, t_start)

    def room(what: str, n: int = 1) -> bool:
        left = args.budget_s - (time.perf_counter() - t_start)
        if EST[what] * n * scale * args.steps / 50 > left:
            res.setdefault("skipped", []).append(f"{what} ({left:.0f} s left)")
            print("skip", what, flush=True)
            return False
        return True

    guarded = gt.guard(res, save)

    from worker.accel.editor import prepare_edit
    from worker.accel.options import SpeedOptions
    from worker.matte import on_backdrop
    from worker.models import build_edit

    gt.reset_peak()
    pipe, build_s = gt.timed(build_edit, args.size, device=device)
    res["build"] = {"build_s": round(build_s, 1), "transformer_params_B": round(
        sum(p.numel() for p in pipe.transformer.parameters()) / 1e9, 3), **gt.peak_gib()}
    print("build", res["build"], flush=True)
    layer = source_layer()
    same = on_backdrop(layer).tobytes() == blend_with_green_bg(layer).tobytes()
    res["input"] = {"layer": [layer.mode, *layer.size], "worker_composite_equals_authors": same}
    save()

    ref_latents = None
    if "ref" in sections:
        def ref():
            nonlocal ref_latents
            gt.sync()
            t0 = time.perf_counter()
            # start-up call (CUDA context, cuBLAS handles, allocator), like the authors' but 2 steps
            pipe(blend_with_green_bg(layer), prompt=PROMPT, negative_prompt=" ", num_inference_steps=2,
                 generator=torch.Generator(device=device).manual_seed(0), true_cfg_scale=4.0)
            gt.sync()
            res["ref_startup_2steps_s"] = round(time.perf_counter() - t0, 2)
            rows = []
            for _ in range(args.ref_jobs):
                row, lat = reference_job(pipe, layer, args.steps, device)
                if ref_latents is not None:
                    row["err_vs_first_ref"] = _err(lat, ref_latents)
                ref_latents = lat if ref_latents is None else ref_latents
                rows.append(row)
                print("ref", row, flush=True)
            res["ref"] = rows
        guarded("ref", ref)
        save()

    editor = None
    if "worker" in sections and room("prepare"):
        def worker():
            nonlocal editor
            gt.reset_peak()
            g0 = _graphs()
            editor, prep_s = gt.timed(prepare_edit, pipe)
            res["worker_prepare"] = {
                "prepare_s": round(prep_s, 1), "options": editor.options.describe(),
                "attention_backend": editor.attention_backend, "probe_seq_len": editor._probe_seq_len(),
                "attention_probes": [p.__dict__ for p in editor.attention_probes],
                "warmup_s": {k: round(v, 1) for k, v in editor.warmup_s.items()},
                "graphs_compiled": _graphs() - g0, **gt.peak_gib()}
            print("prepare", res["worker_prepare"], flush=True)
            save()
            rows = []
            first = None
            for j in range(args.jobs):
                if j and not room("job"):
                    break
                row, lat = worker_job(pipe, layer, args.steps)
                row["err_vs_ref"] = _err(lat, ref_latents)
                if first is not None:
                    row["err_vs_first_job"] = _err(lat, first)
                first = lat if first is None else first
                rows.append(row)
                print("worker job", j + 1, row, flush=True)
                res["worker"] = rows
                save()
        guarded("worker", worker)
        save()

    if ("sdpa" in sections and editor is not None and editor.attention_backend not in (None, "native")
            and room("prepare") and room("job", 2)):
        def sdpa():
            editor.restore()
            torch._dynamo.reset()
            gc.collect()
            gt.reset_peak()
            options = SpeedOptions.for_device(device).replace(attention_backend="native")
            other, prep_s = gt.timed(prepare_edit, pipe, options)
            row, lat = worker_job(pipe, layer, args.steps)
            row.update(prepare_s=round(prep_s, 1), options=other.options.describe(), err_vs_ref=_err(lat, ref_latents))
            res["worker_sdpa"] = row
            print("worker sdpa", row, flush=True)
        guarded("sdpa", sdpa)
        save()

    ref_rows, jobs = res.get("ref") or [], res.get("worker") or []
    if ref_rows and jobs:
        ref_s, steady = ref_rows[-1]["e2e_s"], jobs[-1]["e2e_s"]
        measured = [*ref_rows, *jobs, res.get("worker_prepare", {})]
        res["summary"] = {
            "ref_job_s": ref_s, "worker_first_job_s": jobs[0]["e2e_s"], "worker_steady_job_s": steady,
            "speedup_job": round(ref_s / steady, 3),
            "ref_step_s": ref_rows[-1]["step_s"], "worker_step_s": jobs[-1]["step_s"],
            "speedup_step": round(ref_rows[-1]["step_s"] / jobs[-1]["step_s"], 3) if jobs[-1]["step_s"] else None,
            "err_vs_ref": jobs[-1].get("err_vs_ref"),
            "peak_allocated_gib": max(r.get("allocated_gib", 0) for r in measured),
            "peak_reserved_gib": max(r.get("reserved_gib", 0) for r in measured),
        }
        if "worker_sdpa" in res:
            res["summary"]["speedup_job_sdpa"] = round(ref_s / res["worker_sdpa"]["e2e_s"], 3)
        print("summary", json.dumps(res["summary"]), flush=True)
    save()
    return 1 if res.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
