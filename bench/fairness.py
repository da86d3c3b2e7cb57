"""Fair queues (issue 11, point 2): tenant B's wait behind tenant A's big batch, with and without
fairness, and dispatch latency (enqueue → job start) with N idle workers.

Each case starts the real stack (private redis-server, API under gunicorn, Celery workers running the
tiny model on the CPU, local disk) with `fair_queues` on or off:
- wait: A submits a --batch-job bulk batch (2-step jobs on a small image); once A's first job runs,
  B submits one bulk job. Measured: B's wait (started_at − created_at), A's jobs started between B's
  submission and B's start, B's queue_position when accepted. Without fairness B queues behind the
  whole batch: the case stops after --cap-s and projects B's wait from A's measured throughput
  (labelled `projected`), so the run stays bounded on a shared CPU.
- dispatch: on the same stack once drained, its N workers idle, one job at a time; started_at −
  created_at per job (p50, p99).

    .venv/bin/python bench/fairness.py --batch 1000 --workers 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests

from layerq.client import LayerqClient
from layerq.config import Settings
from layerq.sample import sample_png
from layerq.stack import LocalStack, RedisServer

A = {"Authorization": "Bearer bench-tenant-a"}
B = {"Authorization": "Bearer bench-tenant-b"}


def ts(s: str | None) -> float | None:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() if s else None


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def client(stack: LocalStack, headers: dict) -> LayerqClient:
    session = requests.Session()
    session.headers.update(headers)
    return LayerqClient(stack.url, timeout_s=120, session=session)


def open_stack(run: Path, fair: bool, workers: int) -> LocalStack:
    settings = Settings.from_env(environ={}, model="tiny", device="cpu", storage_dir=str(run / "data"),
                                 model_cache_dir=".layerq/models", fair_queues=fair, worker_heartbeat_s=2)
    stack = LocalStack(settings, run_dir=run)
    stack.start(workers=workers, start_redis=RedisServer.available(), timeout_s=600)
    return stack


def wait_case(stack: LocalStack, n: int, params: dict, cap_s: float) -> dict:
    a, b = client(stack, A), client(stack, B)
    batch = {"defaults": params, "items": [{"file": "f"} for _ in range(n)], "cache": False}
    resp = requests.post(stack.url + "/v1/batches", files={"f": ("f.png", sample_png(96, 96), "image/png")},
                         data={"batch": json.dumps(batch)}, headers=A, timeout=600)
    resp.raise_for_status()
    body = resp.json()
    ids = body["job_ids"]
    while a.get(ids[0])["status"] == "queued":
        time.sleep(0.1)
    files = {"image": ("b.png", sample_png(96, 96), "image/png")}
    job = requests.post(stack.url + "/v1/jobs", files=files, headers=B, timeout=60,
                        data={"params": json.dumps(params), "cache": "false", "priority": "bulk"}).json()
    t0 = time.monotonic()
    while True:
        cur = b.get(job["id"])
        if cur["status"] != "queued" or time.monotonic() - t0 > cap_s:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - t0
    started = [ts(r["started_at"]) for r in page_all(stack, body["id"]) if r["started_at"]]
    created, b_started = ts(job["created_at"]), ts(cur["started_at"])
    out = {"batch": n, "b_queue_position": job["queue_position"], "b_started": b_started is not None}
    if b_started is not None:
        out["b_wait_s"] = round(b_started - created, 2)
        out["a_jobs_started_between"] = sum(1 for s in started if created < s < b_started)
    else:
        done_in_window = sum(1 for s in started if s > created)
        per_s = done_in_window / elapsed if done_in_window else None
        out.update(watched_s=round(elapsed, 1), a_jobs_started_in_window=done_in_window,
                   a_jobs_per_s=round(per_s, 3) if per_s else None,
                   b_wait_s_projected=round(job["queue_position"] / per_s, 0) if per_s else None)
    requests.post(f"{stack.url}/v1/batches/{body['id']}/cancel", headers=A, timeout=120)
    while True:  # drained: the dispatch case then starts on idle workers
        counts = requests.get(f"{stack.url}/v1/batches/{body['id']}", headers=A, timeout=120).json()["counts"]
        if counts["running"] + counts["canceling"] == 0:
            return out
        time.sleep(0.5)


def page_all(stack: LocalStack, batch_id: str) -> list[dict]:
    items, cursor = [], None
    while True:
        q = {"batch": batch_id, "limit": 500, **({"cursor": cursor} if cursor else {})}
        page = requests.get(stack.url + "/v1/jobs", params=q, headers=A, timeout=120).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


def dispatch_case(stack: LocalStack, jobs: int, params: dict) -> dict:
    c = client(stack, A)
    lat = []
    for i in range(jobs + 2):
        job = c.submit(sample_png(96, 96), {**params, "seed": i}, cache=False)
        final = c.wait(job["id"], poll_s=0.1, timeout_s=600)
        if i >= 2:  # the first jobs warm caches
            lat.append(ts(final["started_at"]) - ts(final["created_at"]))
    return {"jobs": len(lat), "p50_ms": round(1000 * statistics.median(lat), 1),
            "p99_ms": round(1000 * pct(lat, 0.99), 1), "max_ms": round(1000 * max(lat), 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=1, help="workers of the stack (both cases)")
    ap.add_argument("--cap-s", type=float, default=90.0)
    ap.add_argument("--dispatch-jobs", type=int, default=20)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    params = {"layers": 2, "num_inference_steps": args.steps, "prompt": "a poster"}
    results: dict = {"workers": args.workers, "steps": args.steps, "wait": {}, "dispatch": {}}
    for fair in (True, False):
        mode = "fair" if fair else "fifo"
        with tempfile.TemporaryDirectory() as tmp:
            with open_stack(Path(tmp), fair, args.workers) as stack:
                results["wait"][mode] = wait_case(stack, args.batch, params, args.cap_s)
                print(mode, "wait", json.dumps(results["wait"][mode]), flush=True)
                results["dispatch"][mode] = dispatch_case(stack, args.dispatch_jobs, params)
                print(mode, "dispatch", json.dumps(results["dispatch"][mode]), flush=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
