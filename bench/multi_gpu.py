"""Throughput of N independent workers on N GPUs against one worker alone (issue 4's scaling target).

One process per GPU (`CUDA_VISIBLE_DEVICES=i`), each with its own full pipeline and the default fast
path, as the Celery deployment runs them. Every process builds, prepares and warms up, waits at a
barrier, runs `--jobs` decompositions concurrently with the others, waits again, and then process 0
runs `--jobs` more alone. Throughput N = all concurrent jobs / (last end − first start); throughput 1 =
process 0's solo jobs / its solo time. Nothing is shared between the processes but the host.

  python bench/multi_gpu.py --gpus 2 --jobs 3 --steps 20 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _barrier(directory: str, name: str, rank: int, world: int, timeout_s: float = 900) -> None:
    open(os.path.join(directory, f"{name}.{rank}"), "w").close()
    deadline = time.time() + timeout_s
    while sum(os.path.exists(os.path.join(directory, f"{name}.{r}")) for r in range(world)) < world:
        if time.time() > deadline:
            raise TimeoutError(f"barrier {name}")
        time.sleep(0.05)


def worker(args) -> None:
    sys.path.insert(0, ROOT)
    import torch

    from bench.bench_sections import PROMPT
    from worker.accel.synthetic import build_pipeline, sample_image
    from worker.acceleration import SpeedOptions, prepare

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    pipe = build_pipeline(args.size, device)
    fast = prepare(pipe, SpeedOptions.for_device(device))
    fast.warmup([(640, 4)], captions=False)
    ready_s = time.perf_counter() - t0
    image = sample_image(640, 640, seed=args.rank)

    def job():
        fast(
            image=image,
            prompt=PROMPT,
            negative_prompt=" ",
            true_cfg_scale=4.0,
            layers=4,
            resolution=640,
            num_inference_steps=args.steps,
            cfg_normalize=True,
            use_en_prompt=True,
            generator=torch.Generator(device=device).manual_seed(777),
        )
        if device == "cuda":
            torch.cuda.synchronize()

    _barrier(args.sync_dir, "ready", args.rank, args.gpus)
    start = time.time()
    for _ in range(args.jobs):
        job()
    end = time.time()
    out = {"rank": args.rank, "ready_s": round(ready_s, 1), "together": [start, end]}
    _barrier(args.sync_dir, "together_done", args.rank, args.gpus)
    if args.rank == 0:
        s = time.time()
        for _ in range(args.jobs):
            job()
        out["alone"] = [s, time.time()]
    with open(os.path.join(args.out, f"worker{args.rank}.json"), "w") as f:
        json.dump(out, f)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full", help="tiny/small: CPU dry check")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--sync-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.rank is not None:
        worker(args)
        return 0

    sync_dir = tempfile.mkdtemp(prefix="layerq-mgpu-")
    procs = []
    for rank in range(args.gpus):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=str(rank))
        cmd = [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:]), "--rank", str(rank),
               "--sync-dir", sync_dir]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    rows = []
    for rank in range(args.gpus):
        path = os.path.join(args.out, f"worker{rank}.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    result = {"gpus": args.gpus, "jobs_each": args.jobs, "steps": args.steps, "exit_codes": codes, "workers": rows}
    if len(rows) == args.gpus and "alone" in rows[0]:
        window = max(r["together"][1] for r in rows) - min(r["together"][0] for r in rows)
        alone = rows[0]["alone"][1] - rows[0]["alone"][0]
        one = args.jobs / alone
        many = args.gpus * args.jobs / window
        result.update(
            jobs_per_hour_one=round(one * 3600, 1),
            jobs_per_hour_n=round(many * 3600, 1),
            scaling=round(many / (args.gpus * one), 3),
            per_job_s_alone=round(alone / args.jobs, 2),
            per_job_s_together=[round((r["together"][1] - r["together"][0]) / args.jobs, 2) for r in rows],
        )
    with open(os.path.join(args.out, "multi_gpu.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
