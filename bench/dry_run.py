"""How close a batch dry run's estimate comes to the measured batch time (tiny model, CPU).

Warms the service-time statistics with a few jobs, asks for a dry run of a batch, runs the same batch
and compares `estimated_completion_s` with the wall time until its last job ended.

    .venv/bin/python bench/dry_run.py --items 8 --steps 6
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

from layerq.client import LayerqClient
from layerq.config import Settings
from layerq.sample import sample_png
from layerq.stack import LocalStack, RedisServer


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    params = {"layers": 2, "num_inference_steps": args.steps, "prompt": "a poster"}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(environ={}, model="tiny", storage_dir=str(Path(tmp) / "data"),
                                     model_cache_dir=".layerq/models")
        with LocalStack(settings, run_dir=Path(tmp)) as stack:
            stack.start(workers=1, cpu_workers=0, start_redis=RedisServer.available(), timeout_s=600)
            client = LayerqClient(stack.url)
            for i in range(args.warmup):
                client.wait(client.submit(sample_png(256, 256), {**params, "seed": i}, cache=False)["id"])
            files = {f"f{i}": (f"{i}.png", sample_png(256, 256), "image/png") for i in range(args.items)}
            batch = {"defaults": params, "items": [{"file": n} for n in files], "cache": False}
            est = requests.post(stack.url + "/v1/batches", files=files,
                                data={"batch": json.dumps({**batch, "dry_run": True})}, timeout=60).json()
            t0 = time.time()
            real = requests.post(stack.url + "/v1/batches", files=files, data={"batch": json.dumps(batch)},
                                 timeout=60).json()
            for job_id in real["job_ids"]:
                client.wait(job_id, poll_s=0.05)
            measured = time.time() - t0
    error = (est["estimated_completion_s"] - measured) / measured
    print(json.dumps({"items": args.items, "estimated_completion_s": est["estimated_completion_s"],
                      "estimated_gpu_s": est["estimated_gpu_s"], "measured_s": round(measured, 2),
                      "relative_error": round(error, 3)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
