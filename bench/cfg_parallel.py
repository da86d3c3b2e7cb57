"""Latency of one job with CFG-parallel (two GPUs) against the same job on one GPU (issue 14, point 1).

Two processes, as `layerq worker --cfg-parallel` runs them: both see the pair's GPUs, rank r builds the
synthetic model (same seed, same weights) on cuda:r with the default fast path. Rank 0 times `--jobs`
jobs alone (the one-GPU path), then the same jobs with `CfgParallel` sending every negative-prompt pass
to rank 1, and compares the final latents (‖split − alone‖₂ / ‖alone‖₂, the error measure of
BENCHMARKS.md). Rank 1 only serves. On a CPU (gloo) it runs as a dry check with `--size tiny`.

  python bench/cfg_parallel.py --size full --jobs 3 --steps 50 --out $OUT     # 2 GPUs
  python bench/cfg_parallel.py --size tiny --jobs 1 --steps 4 --out /tmp/cfgp  # CPU dry check
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights_checksum(module) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.detach().double().sum().item() for p in list(module.parameters())[:8]))


def rank_main(args) -> None:
    sys.path.insert(0, ROOT)
    import torch

    from bench.bench_sections import PROMPT
    from worker.accel.cfg_parallel import CfgLink, CfgParallel, pair_device, serve
    from worker.accel.synthetic import build_pipeline, sample_image
    from worker.acceleration import SpeedOptions, prepare

    device = pair_device("auto", args.rank)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(device)  # the speed-ups' probes and compilation allocate on the current device
    t0 = time.perf_counter()
    pipe = build_pipeline(args.size, device)
    fast = prepare(pipe, SpeedOptions.for_device(torch.device(device)))
    if args.rank == 0 and cuda:
        fast.warmup([(640, args.layers)], captions=False)
    ready_s = time.perf_counter() - t0
    link = CfgLink.connect(f"127.0.0.1:{args.port}", args.rank, device, timeout_s=600, connect_timeout_s=1800)
    link.store.set(f"checksum/{args.rank}", str(_weights_checksum(pipe.transformer)))
    if args.rank == 1:
        serve(pipe.transformer, link)  # until rank 0 leaves
        return

    cfg = CfgParallel(link)
    image = sample_image(640, 640, seed=1)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def job():
        """(seconds, per-step seconds, final latents) of one job on the fast path."""
        marks: list[float] = []
        final = {}

        def on_step(_pipe, i, _t, kw):
            sync()
            marks.append(time.perf_counter())
            if i == args.steps - 1:
                final["latents"] = kw["latents"].detach().float().cpu()
            return kw

        sync()
        start = time.perf_counter()
        fast(image=image, prompt=PROMPT, negative_prompt=" ", true_cfg_scale=4.0, layers=args.layers,
             resolution=640, num_inference_steps=args.steps, cfg_normalize=True, use_en_prompt=True,
             generator=torch.Generator(device=device).manual_seed(777), callback_on_step_end=on_step)
        sync()
        steps = [b - a for a, b in zip(marks, marks[1:])]
        return time.perf_counter() - start, statistics.median(steps) if steps else 0.0, final["latents"]

    with torch.inference_mode():
        if cuda:  # compile rank 1 on this bucket before timing (rank 0 is warm already)
            with cfg.active(pipe):
                fast.warmup([(640, args.layers)], captions=False)
        alone = [job() for _ in range(args.jobs)]
        with cfg.active(pipe):
            split = [job() for _ in range(args.jobs)]
    ref = alone[0][2]
    err = max(float((s[2] - ref).norm() / ref.norm()) for s in split)
    run_to_run = max(float((a[2] - ref).norm() / ref.norm()) for a in alone)
    result = {
        "size": args.size, "steps": args.steps, "layers": args.layers, "jobs": args.jobs, "device": device,
        "card": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
        "ready_s": round(ready_s, 1),
        "weights_equal": link.store.get("checksum/0") == link.store.get("checksum/1"),
        "one_gpu_e2e_s": [round(a[0], 3) for a in alone], "one_gpu_step_s": [round(a[1], 4) for a in alone],
        "cfg_parallel_e2e_s": [round(s[0], 3) for s in split], "cfg_parallel_step_s": [round(s[1], 4) for s in split],
        "rel_error_vs_one_gpu": err, "rel_error_run_to_run": run_to_run,
        "speedup_e2e": round(statistics.median(a[0] for a in alone) / statistics.median(s[0] for s in split), 3),
        "remote_calls": cfg.remote_calls,
    }
    cfg.close()
    with open(os.path.join(args.out, "cfg_parallel.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "small", "full"], default="full")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.rank is not None:
        rank_main(args)
        return 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, NCCL_NVLS_ENABLE="0")
    cmd = [sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]), "--port", str(port)]
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=env) for r in (0, 1)]
    codes = [p.wait() for p in procs]
    print(json.dumps({"exit_codes": codes}), flush=True)
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
