"""Submission speed of the API (issue 3's targets), against the real stack on loopback.

- batch: one `POST /v1/batches` of N uploaded-input items (default 10,000); accepted jobs per second
  = N / request time (validation, N job records, N queue messages), best and median of --repeat.
- concurrent: 50 client threads in 5 processes each submitting single multipart jobs
  (a 128×128 PNG) with a fixed think time; latency percentiles of the accepted (202) submissions per
  offered load, and how many were not accepted (`not_accepted`, by status or by client error).

No GPU worker runs (the jobs stay queued), so only the API's work is measured.

    .venv/bin/python bench/submit.py batch --items 10000
    .venv/bin/python bench/submit.py concurrent --clients 50 --rates 50,100,200
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from layerq.config import Settings
from layerq.sample import sample_png
from layerq.stack import LocalStack, RedisServer


def start_stack(run: Path, api_workers: int) -> LocalStack:
    settings = Settings.from_env(environ={}, storage_dir=str(run / "data"), model="tiny")
    stack = LocalStack(settings, run_dir=run, api_workers=api_workers)
    return stack.start(workers=0, cpu_workers=0, start_redis=RedisServer.available(), timeout_s=120)


def uploaded_input(url: str) -> str:
    """One real upload (uploads are bound to the tenant that asked for them), shared by every item."""
    ticket = requests.post(url + "/v1/uploads", json={"content_type": "image/png"}, timeout=30)
    assert ticket.status_code == 201, ticket.text[:300]
    t = ticket.json()
    put = requests.request(t["method"], t["url"], data=sample_png(128, 128), headers=t["headers"], timeout=30)
    assert put.status_code in (200, 201, 204), put.text[:300]
    return t["input_key"]


def bench_batch(url: str, items: int, repeat: int) -> dict:
    rates = []
    key = uploaded_input(url)
    for _ in range(repeat):
        body = {"defaults": {"layers": 4, "num_inference_steps": 50},
                "items": [{"input_key": key, "params": {"seed": i}} for i in range(items)]}
        data = json.dumps(body).encode()
        t0 = time.perf_counter()
        resp = requests.post(url + "/v1/batches", data=data, headers={"Content-Type": "application/json"}, timeout=300)
        dt = time.perf_counter() - t0
        assert resp.status_code == 202, resp.text[:300]
        assert len(resp.json()["job_ids"]) == items
        rates.append(items / dt)
    return {"items": items, "repeat": repeat, "jobs_per_s_best": max(rates), "jobs_per_s_median": statistics.median(rates),
            "request_s_median": items / statistics.median(rates)}


def _client_proc(url: str, threads: int, interval_s: float, duration_s: float, out: mp.Queue) -> None:
    image = sample_png(128, 128)
    lat: list[float] = []
    # Answers other than 202 (by status) and requests that got no answer at all (by exception
    # type): they are not in the latencies, so they must be reported, or an overloaded API that
    # sheds load would look fast.
    refused: Counter[str] = Counter()
    lock = threading.Lock()

    def run(offset: float) -> None:
        s = requests.Session()
        time.sleep(offset)
        end = time.monotonic() + duration_s
        next_at = time.monotonic()
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                r = s.post(url + "/v1/jobs", files={"image": ("a.png", image, "image/png")},
                           data={"params": '{"num_inference_steps": 50}'}, timeout=30)
                outcome = None if r.status_code == 202 else str(r.status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            dt = time.perf_counter() - t0
            with lock:
                if outcome is None:
                    lat.append(dt)
                else:
                    refused[outcome] += 1
            next_at += interval_s  # open loop: a slow answer does not slow the offered load
            time.sleep(max(0.0, next_at - time.monotonic()))

    ts = [threading.Thread(target=run, args=(i * interval_s / threads,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, dict(refused)))


def bench_concurrent(url: str, clients: int, rate: float, duration_s: float, procs: int = 5) -> dict:
    interval = clients / rate  # each client's period so that all together offer `rate` jobs/s
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_client_proc, args=(url, clients // procs, interval, duration_s, q)) for _ in range(procs)]
    for p in ps:
        p.start()
    lat: list[float] = []
    refused: Counter[str] = Counter()
    for _ in ps:
        got, bad = q.get()
        lat.extend(got)
        refused.update(bad)
    lat.sort()
    for p in ps:
        p.join()
    pct = lambda q_: 1000 * lat[min(len(lat) - 1, int(q_ * len(lat)))] if lat else None  # noqa: E731
    return {"clients": clients, "offered_per_s": rate, "completed": len(lat), "achieved_per_s": len(lat) / duration_s,
            "not_accepted": sum(refused.values()), "not_accepted_by_answer": dict(sorted(refused.items())),
            "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["batch", "concurrent"])
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--rates", default="25,50,100")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--api-workers", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, start_stack(Path(tmp), args.api_workers) as stack:
        if args.mode == "batch":
            print(json.dumps(bench_batch(stack.url, args.items, args.repeat), indent=2))
        else:
            for rate in (float(r) for r in args.rates.split(",")):
                print(json.dumps(bench_concurrent(stack.url, args.clients, rate, args.duration)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
