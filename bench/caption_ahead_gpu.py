"""Issue 12 item 4's target on the worker's own path: an auto-captioned job in a queue of 8 within
1.05x of the same job with a prompt. One process, synthetic model, `DecomposePipeline` as a worker
holds it (fast captions on, batch-invariant on CUDA).

  1. `prompted`: `DecomposePipeline.run` of the first image with its caption given as `prompt` (the
     same job with a prompt), after a warm-up job; `--jobs` timed.
  2. `queue_of_8`: what a worker does for 8 waiting auto-caption jobs with captions written ahead
     (worker/caption_ahead.py): `caption_images` of the 8 inputs in one call, then 8 × `run(...,
     caption=)`. Per job: the total / 8, and its ratio to `prompted`.
  3. `alone`: one auto-caption job captioning itself (`caption_images` of 1, then `run`), for scale.
  4. Invariance: each of the 8 captions against the same image captioned alone (the captioner's
     in-process cache is off here, so "alone" really generates).

  python bench/caption_ahead_gpu.py --size full --out $OUT
  python bench/caption_ahead_gpu.py --size small --steps 2 --jobs 1 --out /tmp/ca    # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.pipeline import DecomposePipeline, _caption_without_cudnn_attention  # noqa: E402

SHAPES = ((640, 640), (640, 480), (480, 640), (600, 600), (700, 500), (512, 640), (640, 560), (560, 640))


def timed(fn, *args, **kwargs):
    gt.sync()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    gt.sync()
    return out, time.perf_counter() - t0


def worker_pipeline(size: str, device: str) -> DecomposePipeline:
    """The synthetic pipeline wrapped as `DecomposePipeline.load` leaves it on this device."""
    pipe = build_pipeline(size, device)
    dp = DecomposePipeline(pipe=pipe, device=torch.device(device), dtype=pipe.transformer.dtype,
                           model_id="synthetic", path="-")
    if device == "cuda":
        _caption_without_cudnn_attention(pipe)
        dp._accelerate(True, ((640, 4),))  # fast captions on, as LAYERQ_FAST_CAPTIONS=1
        # Batch-invariant captions (issue 12 item 4, branch capinv), no in-process cache so "alone"
        # below generates; the captioner reads its own copy of the options.
        options = dp.runner.options.replace(caption_batch_invariant=True, caption_cache_entries=0)
        dp.runner.options = dp.runner.captioner.options = options
    return dp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=2, help="timed prompted jobs")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    t_start, device, res = gt.start(args)
    path = os.path.join(args.out, "caption_ahead.json")

    def save():
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)

    dp, build_s = timed(worker_pipeline, args.size, device)
    res["build_s"], res["flavour"], res["batches_captions"] = round(build_s, 1), dp.caption_flavour, dp.batches_captions
    images = [sample_image(w, h, seed=i) for i, (w, h) in enumerate(SHAPES)]
    prompted = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps)
    auto = prompted.model_copy(update={"prompt": ""})

    dp.run(images[0], prompted)  # warm-up (first shape compiles)
    dp.caption_images(images, True, 640)  # warm-up of the batch shape
    captions, caption_s = timed(dp.caption_images, images, True, 640)

    # 1. the same job with a prompt: its own caption given as `prompt` (same text tokens, so the
    # same denoising cost; random weights caption 512 tokens, far more than a real caption)
    same_job = prompted.model_copy(update={"prompt": captions[0]})
    rows = [timed(dp.run, images[0], same_job)[1] for _ in range(args.jobs)]
    res["prompted_s"] = [round(s, 2) for s in rows]
    base = min(rows)
    print("prompted", res["prompted_s"], flush=True)
    save()

    # 2. a queue of 8 with captions written ahead: one caption call, 8 runs handed their caption
    runs = [timed(dp.run, im, auto, caption=c)[1] for im, c in zip(images, captions)]
    per_job = (caption_s + sum(runs)) / len(images)
    res["queue_of_8"] = {"caption_8_s": round(caption_s, 2), "runs_s": [round(s, 2) for s in runs],
                         "per_job_s": round(per_job, 2), "per_job_over_prompted": round(per_job / base, 3)}
    print("queue_of_8", res["queue_of_8"], flush=True)
    save()

    # 3. one auto-caption job alone, and 4. each image's caption alone
    alone_caption, alone_caption_s = timed(dp.caption_images, images[:1], True, 640)
    alone_run_s = timed(dp.run, images[0], auto, caption=alone_caption[0])[1]
    res["alone"] = {"caption_s": round(alone_caption_s, 2), "run_s": round(alone_run_s, 2),
                    "over_prompted": round((alone_caption_s + alone_run_s) / base, 3)}
    alone = alone_caption + [dp.caption_images([im], True, 640)[0] for im in images[1:]]
    res["invariant"] = [a == b for a, b in zip(alone, captions)]
    print("alone", res["alone"], "invariant", res["invariant"], flush=True)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
