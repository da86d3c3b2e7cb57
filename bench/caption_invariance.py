"""Are fast captions batch-invariant on the GPU (issue 12, point 4)? One process, bf16, full-size model.

The batched fast captioner (static cache, compiled decoding) with `caption_batch_invariant=True`, 512 new
tokens per caption. Image A alone twice (run after run), A inside a batch of 8 different images, A at
another position of a batch of 6 (padded to 8), image B alone and in the batch of 8. Prints whether the
tokens are identical and the first differing position, and each `generate_ids` call's time; the same
calls without the invariant mode (batch 1 and batch 8 shapes as before) for comparison.

  PYTHONUNBUFFERED=1 python bench/caption_invariance.py --out $OUT
  python bench/caption_invariance.py --size small --tokens 8 --out /tmp/ci     # CPU smoke test
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
from worker.accel.captioner import Captioner, prompt_image_for  # noqa: E402
from worker.accel.options import SpeedOptions  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402

SHAPES = ((640, 640), (640, 480), (480, 640), (600, 600), (700, 500), (512, 640), (640, 560), (560, 640))


def first_diff(a: list[int] | None, b: list[int] | None) -> int | None:
    if a is None or b is None:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--modes", default="invariant", help="invariant,plain (plain: the captioner as before)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--deterministic", action="store_true",
                    help="CUBLAS_WORKSPACE_CONFIG=:4096:8 and torch.use_deterministic_algorithms(warn_only)")
    ap.add_argument("--quick", action="store_true", help="only A alone twice and the batch of 8")
    args = ap.parse_args(argv)
    if args.deterministic:
        import warnings

        import torch._inductor.config as inductor_config

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if hasattr(inductor_config, "deterministic"):
            inductor_config.deterministic = True
        warnings.simplefilter("always")
    t_start, device, res = gt.start(args)
    path = os.path.join(args.out, "caption_invariance.json")
    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    images = [prompt_image_for(pipe, sample_image(w, h, seed=i), 640) for i, (w, h) in enumerate(SHAPES)]
    a, b = images[0], images[5]

    def save():
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)

    for mode in args.modes.split(","):
        invariant = mode == "invariant"
        opts = SpeedOptions.for_device(device).replace(caption_batch_invariant=invariant, caption_batch_sizes=(1, 8))
        cap = Captioner(pipe, opts)
        times, ids = {}, {}

        def gen(name, imgs):
            out, s = gt.timed(cap.generate_ids, imgs, True, args.tokens)
            times[name] = round(s, 2)
            ids[name] = out
            print(mode, name, times[name], "s", flush=True)
            return out

        _, warm_s = gt.timed(cap.warmup, 640)
        times["warmup_compile"] = round(warm_s, 1)
        a1 = gen("A alone", [a])[0]
        a2 = gen("A alone again", [a])[0]
        a3 = gen("A alone a third time", [a])[0]
        batch8 = gen("batch of 8", images)
        if args.quick:  # their comparisons are reported as "not run" below
            batch6, b1 = [None] * 6, None
        else:
            batch6 = gen("batch of 6 (A last)", images[2:7] + [a])
            b1 = gen("B alone", [b])[0]
        res[mode] = {
            "times_s": times,
            "A_run_to_run_first_diff": first_diff(a1, a2),
            "A_run2_vs_run3_first_diff": first_diff(a2, a3),
            "A_alone_vs_batch8_first_diff": first_diff(a1, batch8[0]),
            "A_alone_vs_batch6_first_diff": first_diff(a1, batch6[-1]),
            "B_alone_vs_batch8_first_diff": first_diff(b1, batch8[5]),
            "batch8_vs_batch6_rows_first_diff": [first_diff(batch8[i], batch6[i - 2]) for i in range(2, 7)],
            "per_job_caption_s_batch8": round(times["batch of 8"] / 8, 3),
        }
        if args.quick:
            for key in ("A_alone_vs_batch6_first_diff", "B_alone_vs_batch8_first_diff", "batch8_vs_batch6_rows_first_diff"):
                res[mode][key] = "not run (--quick)"
        print(mode, {k: v for k, v in res[mode].items() if k != "times_s"}, flush=True)
        save()
        if device == "cuda":
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    save()
    print("\n== summary ==")
    for mode in args.modes.split(","):
        r = res.get(mode, {})
        print(mode, "identical (None = yes):", {k: v for k, v in r.items() if "diff" in k},
              "batch-8 per job", r.get("per_job_caption_s_batch8"), "s; alone", r.get("times_s", {}).get("A alone again"), "s")
    print("done", round(time.perf_counter() - t_start, 1), "s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
