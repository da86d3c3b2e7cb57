"""Dispatch latency with N idle workers (issue 11's benchmark): enqueue → job start, p50 and p99.

For each N (default 1, 2, 3) the real stack is started (private redis-server, API under gunicorn, N
Celery decompose workers, one CPU worker, local disk) with the classic decomposer (no model, a job
takes a fraction of a second, so the machine measures dispatch and not inference). Then, with every
worker idle:
- single: one job at a time, the next submitted once the last one finished;
- burst: N jobs in one batch, so each idle worker should take one at once (with fair queues the
  room on the broker is one job per live worker, so this shows admission does not hold any back),
  the next burst once all N finished.
Latency is `started_at − created_at` of each job: from the API writing its record (before its
message is sent) to a worker claiming it, both stamped by server clocks on this one machine. The
first two jobs of each N warm the workers and are not counted.

    PYTHONPATH=$PWD .venv/bin/python bench/dispatch_latency.py --workers 1,2,3 --jobs 40 --bursts 10 \
        --json bench/results/dispatch_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import requests

from layerq.client import LayerqClient
from layerq.config import Settings
from layerq.sample import sample_png
from layerq.stack import LocalStack, RedisServer

PARAMS = {"layers": 2}


def ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with fewer than 100 samples the p99 is the slowest but one or the max)."""
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summary(lat_s: list[float]) -> dict:
    ms = [1000 * x for x in lat_s]
    return {"jobs": len(ms), "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(pct(ms, 0.99), 1),
            "max_ms": round(max(ms), 1), "mean_ms": round(statistics.fmean(ms), 1)}


def latency(job: dict) -> float:
    return ts(job["started_at"]) - ts(job["created_at"])


def single_case(client: LayerqClient, image: bytes, jobs: int) -> list[float]:
    out = []
    for i in range(jobs + 2):
        job = client.submit(image, {**PARAMS, "seed": i}, cache=False)
        final = client.wait(job["id"], poll_s=0.05, timeout_s=300)
        assert final["status"] == "succeeded", final.get("error")
        if i >= 2:
            out.append(latency(final))
    return out


def burst_case(stack: LocalStack, client: LayerqClient, image: bytes, n: int, bursts: int) -> list[float]:
    out = []
    for b in range(bursts):
        batch = {"defaults": PARAMS, "items": [{"file": "f", "params": {"seed": 1000 * b + i}} for i in range(n)],
                 "cache": False, "priority": "interactive"}
        resp = requests.post(stack.url + "/v1/batches", files={"f": ("f.png", image, "image/png")},
                             data={"batch": json.dumps(batch)}, timeout=60)
        resp.raise_for_status()
        finals = [client.wait(j, poll_s=0.05, timeout_s=300) for j in resp.json()["job_ids"]]
        assert all(f["status"] == "succeeded" for f in finals), [f.get("error") for f in finals]
        out += [latency(f) for f in finals]
    return out


def run(n: int, jobs: int, bursts: int, fair: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        settings = Settings.from_env(environ={}, model="classic", device="cpu", storage_dir=str(run_dir / "data"),
                                     model_cache_dir=".layerq/models", fair_queues=fair, worker_heartbeat_s=2)
        with LocalStack(settings, run_dir=run_dir) as stack:
            stack.start(workers=n, start_redis=RedisServer.available(), timeout_s=600)
            client = LayerqClient(stack.url, timeout_s=60)
            image = sample_png(96, 96)
            single = single_case(client, image, jobs)
            burst = burst_case(stack, client, image, n, bursts)
    return {"workers": n, "fair_queues": fair, "single": summary(single), "burst": summary(burst)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", default="1,2,3", help="comma-separated N")
    ap.add_argument("--jobs", type=int, default=40, help="single jobs per N (counted)")
    ap.add_argument("--bursts", type=int, default=10, help="bursts of N jobs per N")
    ap.add_argument("--fifo", action="store_true", help="also without fair queues")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_avg_at_start": os.getloadavg()},
        "runs": [],
    }
    for n in (int(x) for x in args.workers.split(",")):
        for fair in (True, False) if args.fifo else (True,):
            t0 = time.monotonic()
            res = run(n, args.jobs, args.bursts, fair)
            res["wall_s"] = round(time.monotonic() - t0, 1)
            res["load_avg_after"] = os.getloadavg()
            results["runs"].append(res)
            print(json.dumps(res), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
