"""Slow clients (issue 11, point 9): does the API keep answering while many uploads trickle in?

Starts the real API under gunicorn on loopback (private redis-server, local-disk storage, no GPU
worker: only the API is measured), opens --slow connections that each announce a multipart
`POST /v1/jobs` of --body-bytes and then send --bytes-per-s of it, and meanwhile
- probes `GET /livez` every --probe-ms on a fresh connection, and
- submits a normal small job (a 64×64 PNG, multipart) every --submit-ms,
measuring each request's latency (a request that times out after --timeout-s counts as that long).
The slow bodies never finish within --duration-s; every socket is closed at the end.

    .venv/bin/python bench/slow_clients.py --slow 50 --duration-s 20
    .venv/bin/python bench/slow_clients.py --slow 6 --api-threads 1   # sync workers: the old behaviour
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from layerq.config import Settings
from layerq.sample import sample_png
from layerq.stack import LocalStack, RedisServer


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


class SlowUploads:
    """`count` connections, each sending a large multipart upload a few bytes per second."""

    def __init__(self, host: str, port: int, count: int, body_bytes: int, bytes_per_s: float) -> None:
        self.host, self.port, self.count = host, port, count
        self.body_bytes, self.bytes_per_s = body_bytes, bytes_per_s
        self.socks: list[socket.socket] = []
        self.refused = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def start(self) -> "SlowUploads":
        boundary = "slowclientboundary"
        head = (f"POST /v1/jobs HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {self.body_bytes}\r\n\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode()
        for _ in range(self.count):
            s = socket.create_connection((self.host, self.port), timeout=5)
            s.sendall(head)
            s.setblocking(False)
            self.socks.append(s)
        self.thread.start()
        return self

    def _trickle(self) -> None:
        tick_s = 0.5
        chunk = b"\x89" * max(1, int(self.bytes_per_s * tick_s))
        while not self.stop.wait(tick_s):
            for s in self.socks:
                try:
                    s.send(chunk)
                except (BlockingIOError, OSError):
                    self.refused += 1  # the server gave up on this body (e.g. its read deadline)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def probe_loop(name: str, fn, interval_s: float, until: float, out: dict) -> None:
    lat, errors = [], 0
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:
            errors += 1
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(max(0.0, interval_s - (time.perf_counter() - t0)))
    out[name] = {"count": len(lat), "errors": errors, "p50_ms": round(pct(lat, 0.5), 1),
                 "p99_ms": round(pct(lat, 0.99), 1), "max_ms": round(max(lat, default=float("nan")), 1)}


def measure(url: str, args: argparse.Namespace) -> dict:
    host, port = url.split("//")[1].split(":")
    png = sample_png(64, 64)
    params = json.dumps({"layers": 2, "num_inference_steps": 2, "seed": 1})

    def livez() -> None:
        requests.get(url + "/livez", timeout=args.timeout_s).raise_for_status()

    def submit() -> None:
        r = requests.post(url + "/v1/jobs", files={"image": ("a.png", png, "image/png")},
                          data={"params": params}, timeout=args.timeout_s)
        assert r.status_code == 202, r.text

    slow = SlowUploads(host, int(port), args.slow, args.body_bytes, args.bytes_per_s).start()
    time.sleep(1.0)  # every slow upload is in flight before the first probe
    out: dict = {}
    until = time.monotonic() + args.duration_s
    threads = [threading.Thread(target=probe_loop, args=("livez", livez, args.probe_ms / 1000, until, out)),
               threading.Thread(target=probe_loop, args=("submit", submit, args.submit_ms / 1000, until, out))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slow.close()
    out["slow_uploads"] = args.slow
    out["slow_sends_refused"] = slow.refused
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slow", type=int, default=50, help="slow uploads in flight")
    ap.add_argument("--body-bytes", type=int, default=1_000_000, help="announced size of each slow body")
    ap.add_argument("--bytes-per-s", type=float, default=4.0, help="how fast each slow body arrives")
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--probe-ms", type=float, default=50.0, help="a /livez request this often")
    ap.add_argument("--submit-ms", type=float, default=200.0, help="a normal job submission this often")
    ap.add_argument("--timeout-s", type=float, default=5.0, help="a request slower than this failed")
    ap.add_argument("--api-workers", type=int, default=2, help="gunicorn processes")
    ap.add_argument("--api-threads", type=int, help="threads per process (1: sync workers); default: Settings")
    ap.add_argument("--body-timeout-s", type=float, help="LAYERQ_REQUEST_BODY_TIMEOUT_S; default: Settings")
    ap.add_argument("--url", help="measure this running API instead of starting one")
    ap.add_argument("--json", type=Path, help="write the numbers here")
    args = ap.parse_args()

    if args.url:
        result = measure(args.url.rstrip("/"), args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp)
            overrides = {"api_threads": args.api_threads, "request_body_timeout_s": args.body_timeout_s}
            settings = Settings.from_env(environ={}, storage_dir=str(run / "data"), model="tiny", **overrides)
            with LocalStack(settings, run_dir=run, api_workers=args.api_workers) as stack:
                stack.start(workers=0, cpu_workers=0, start_redis=RedisServer.available(), timeout_s=120)
                result = measure(stack.url, args)
                result["api"] = {"workers": args.api_workers, "threads": stack.settings.api_threads,
                                 "body_timeout_s": stack.settings.request_body_timeout_s}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
