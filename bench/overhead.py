"""System overhead of one job on an idle worker: end-to-end job time minus the pipeline call.

Starts the real stack (private redis-server, API under gunicorn, one Celery worker with the tiny
model on the CPU, local-disk or S3 storage), submits jobs one at a time and reads each finished
job's record. Two measures per job:
- server: finished_at − created_at (the API accepted it → the worker marked it succeeded), minus
  the worker's measured pipeline call;
- client: submit request sent → `succeeded` seen by a client polling every --poll-ms, minus the same.
  Polling costs the API CPU on this 2-core machine (every 5 ms is ~40 % of a core), which the worker
  then lacks, so the server measure is taken with a gentle poll and the client one reported beside it.

    .venv/bin/python bench/overhead.py --jobs 30
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


def parse_ts(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--size", default="640x640", help="input image size WxH")
    ap.add_argument("--storage", choices=["local", "s3"], default="local")
    ap.add_argument("--s3-endpoint", default="", help="with --storage s3: an S3 endpoint (e.g. moto server)")
    ap.add_argument("--json", type=Path, help="write raw numbers here")
    ap.add_argument("--poll-ms", type=float, default=50.0)
    args = ap.parse_args()

    w, h = (int(v) for v in args.size.split("x"))
    image = sample_png(w, h)
    params = {"layers": args.layers, "num_inference_steps": args.steps, "prompt": "a poster", "seed": 1}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp)
        overrides = dict(model="tiny", device="cpu", storage_dir=str(run / "data"), model_cache_dir=".layerq/models")
        if args.storage == "s3":
            overrides.update(storage="s3", s3_endpoint_url=args.s3_endpoint, s3_bucket="bench",
                             s3_create_bucket=True, s3_access_key_id="bench", s3_secret_access_key="bench")
        settings = Settings.from_env(environ={}, **overrides)
        with LocalStack(settings, run_dir=run) as stack:
            stack.start(workers=1, start_redis=RedisServer.available(), timeout_s=600)
            client = LayerqClient(stack.url)
            rows = []
            for i in range(args.warmup + args.jobs):
                t0 = time.time()
                job = client.submit(image, {**params, "seed": i}, cache=False)
                final = client.wait(job["id"], poll_s=args.poll_ms / 1000, timeout_s=600)
                t1 = time.time()
                assert final["status"] == "succeeded", final
                if i < args.warmup:
                    continue
                pipeline = final["timings"]["pipeline"]
                server = parse_ts(final["finished_at"]) - parse_ts(final["created_at"])
                rows.append({"server_s": server, "client_s": t1 - t0, "pipeline_s": pipeline,
                             "timings": final["timings"],
                             "queue_wait_s": parse_ts(final["started_at"]) - parse_ts(final["created_at"])})
            # Leave the log of the API's own request latency out of it: this is per-job overhead.
            requests.get(stack.url + "/healthz", timeout=5)

    def summary(key: str) -> dict[str, float]:
        over = [r[key] - r["pipeline_s"] for r in rows]
        return {"p50_ms": 1000 * statistics.median(over), "p95_ms": 1000 * pct(over, 0.95)}

    stages = {k: 1000 * statistics.median(r["timings"].get(k, 0.0) for r in rows)
              for k in ("load_input", "encoding", "denoising", "decoding", "exporting", "uploading", "total", "pipeline")}
    out = {
        "jobs": len(rows), "storage": args.storage, "size": args.size, "layers": args.layers, "steps": args.steps,
        "pipeline_p50_s": statistics.median(r["pipeline_s"] for r in rows),
        "overhead_server": summary("server_s"), "overhead_client": summary("client_s"),
        "queue_wait_p50_ms": 1000 * statistics.median(r["queue_wait_s"] for r in rows),
        "stage_p50_ms": stages,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": out, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
