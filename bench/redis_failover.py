"""What surviving the loss of the Redis host costs (issue 16), on loopback: one master, one replica,
three Sentinels (layerq/redis_ha.py) and the API under gunicorn; no GPU worker (jobs stay queued), so
only the API and Redis are measured.

- throughput: single multipart submissions (a 96×96 PNG) from --clients threads for --seconds, with
  `LAYERQ_REDIS_WAIT_REPLICAS` 0 (answer once the master has the jobs) and 1 (once a replica has them).
- failover: --failovers times, SIGKILL the master while probes read a job (`GET /v1/jobs/{id}`) and
  submit (knob off) every 50 ms; unavailability = kill → first answered read / accepted submission
  among requests sent after the kill.
  The killed server is restarted (a host coming back) and rejoins as a replica before the next round.

    .venv/bin/python bench/redis_failover.py --clients 8 --seconds 15 --rounds 3 --failovers 5 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from layerq.config import Settings
from layerq.redis_ha import SentinelGroup
from layerq.sample import sample_png
from layerq.stack import LocalStack

IMAGE = sample_png(96, 96)
PARAMS = json.dumps({"layers": 2, "num_inference_steps": 2, "prompt": "x"})


def submit(url: str, session: requests.Session, timeout_s: float = 30) -> requests.Response:
    return session.post(url + "/v1/jobs", files={"image": ("i.png", IMAGE, "image/png")},
                        data={"params": PARAMS, "cache": "false"}, timeout=timeout_s)


def start_stack(group: SentinelGroup, run: Path, wait_replicas: int, api_workers: int) -> LocalStack:
    settings = Settings.from_env(environ={}, redis_url=group.url, redis_wait_replicas=wait_replicas,
                                 storage_dir=str(run / "data"), model="tiny", key_prefix=f"b{wait_replicas}")
    return LocalStack(settings, run_dir=run, api_workers=api_workers).start(workers=0, cpu_workers=0, timeout_s=120)


def throughput(url: str, clients: int, seconds: float) -> dict:
    counts = {"accepted": 0, "refused": 0}
    latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run() -> None:
        session = requests.Session()
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            ok = submit(url, session).status_code == 202
            with lock:
                counts["accepted" if ok else "refused"] += 1
                if ok:
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    latencies.sort()
    return {**counts, "per_s": round(counts["accepted"] / elapsed, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
            "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None}


def one_failover(group: SentinelGroup, url: str, job_id: str) -> dict:
    first_ok: dict[str, float] = {}
    killed = threading.Event()
    done = threading.Event()
    killed_at = [0.0]
    # Every request around the kill, until the first success after it: (kind, sent, answered — both
    # seconds from the kill — and the answer), so an outlier shows whether one request hung or many
    # were refused.
    attempts: list[dict] = []

    def probe(kind: str) -> None:
        session = requests.Session()
        while not done.is_set():
            started_after_kill = killed.is_set()  # a request in flight at the kill proves nothing
            sent = time.monotonic()
            try:
                if kind == "read":
                    answer = session.get(f"{url}/v1/jobs/{job_id}", timeout=30)
                else:
                    answer = submit(url, session)
                ok = answer.status_code == (200 if kind == "read" else 202)
                outcome = str(answer.status_code) if ok else f"{answer.status_code} {answer.text[:120]}"
            except requests.RequestException as exc:
                ok, outcome = False, type(exc).__name__
            if killed.is_set() and kind not in first_ok:
                attempts.append({"kind": kind, "sent_s": round(sent - killed_at[0], 2),
                                 "answered_s": round(time.monotonic() - killed_at[0], 2), "answer": outcome})
            if ok and started_after_kill and kind not in first_ok:
                first_ok[kind] = time.monotonic() - killed_at[0]
            time.sleep(0.05)

    threads = [threading.Thread(target=probe, args=(k,)) for k in ("read", "submit")]
    for t in threads:
        t.start()
    time.sleep(1.0)
    old, killed_at[0] = group.kill_master()
    killed.set()
    new_port = group.wait_promoted(old.port, timeout_s=120)
    promoted_s = time.monotonic() - killed_at[0]
    deadline = time.monotonic() + 120
    while len(first_ok) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    done.set()
    for t in threads:
        t.join()
    group.rejoin(old)
    return {"promoted_s": round(promoted_s, 2), "read_unavailable_s": round(first_ok.get("read", -1), 2),
            "submit_unavailable_s": round(first_ok.get("submit", -1), 2), "new_master_port": new_port,
            "attempts": attempts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--failovers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="throughput runs per mode, alternating")
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="layerq-failover-"))
    print(f"logs (API, Redis, Sentinels) under {run}", flush=True)
    group = SentinelGroup(run / "redis").start()
    report: dict = {"machine": platform.node(), "python": sys.version.split()[0],
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clients": args.clients,
                    "down_after_ms": group.down_after_ms, "throughput": {}, "failovers": []}
    stacks: dict[int, LocalStack] = {}
    try:
        for wait in (0, 1):
            stacks[wait] = start_stack(group, run / f"stack-{wait}", wait, args.api_workers)
            submit(stacks[wait].url, requests.Session())  # warm
        # Alternate the two modes (--rounds times each) so a busy shared machine skews both alike.
        for r in range(args.rounds):
            for wait, stack in stacks.items():
                result = throughput(stack.url, args.clients, args.seconds)
                report["throughput"].setdefault(f"wait_replicas={wait}", []).append(result)
                print(wait, json.dumps(result), flush=True)
        job_id = submit(stacks[0].url, requests.Session()).json()["id"]
        for n in range(args.failovers):
            report["failovers"].append(one_failover(group, stacks[0].url, job_id))
            print(json.dumps({k: v for k, v in report["failovers"][-1].items() if k != "attempts"}), flush=True)
        for name in ("promoted_s", "read_unavailable_s", "submit_unavailable_s"):
            values = [f[name] for f in report["failovers"] if f[name] >= 0]
            report[f"p50_{name}"] = round(statistics.median(values), 2) if values else None
    finally:
        for stack in stacks.values():
            stack.stop(timeout_s=10)
        group.stop()
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
