"""The `layerq` command: run the stack (`up`, `api`, `worker`), submit images (`submit`) and the
one-command demo (`demo`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from layerq.config import Settings
from layerq.queues import DECOMPOSE_QUEUE, GPU_QUEUES

SUBCOMMANDS = ("up", "api", "worker", "submit", "demo")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerq", description="Decompose images into editable RGBA layers.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + one worker + embedded storage on this machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--model", help="hub id, local directory, or 'tiny' (default: LAYERQ_MODEL)")
    up.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU)")

    api = sub.add_parser("api", help="the HTTP API under gunicorn")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")

    w = sub.add_parser("worker", help="a Celery worker (one per GPU; loads the model once)")
    w.add_argument("--model", help="hub id, local directory, or 'tiny' (default: LAYERQ_MODEL)")
    w.add_argument("--queues", default=DECOMPOSE_QUEUE)
    w.add_argument("--name", default="layerq@%h")
    w.add_argument("--loglevel", default="INFO")

    s = sub.add_parser("submit", help="submit images, optionally wait and download the results")
    s.add_argument("images", nargs="+", type=Path)
    s.add_argument("--url", default=os.environ.get("LAYERQ_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--params", default="{}", help="job parameters as a JSON object")
    s.add_argument("--layers", type=int)
    s.add_argument("--resolution", type=int)
    s.add_argument("--steps", dest="num_inference_steps", type=int)
    s.add_argument("--prompt")
    s.add_argument("--seed", type=int)
    s.add_argument("--wait", action="store_true", help="wait for the jobs, with a progress bar")
    s.add_argument("--out", type=Path, help="download results here (implies --wait)")

    d = sub.add_parser("demo", help="start the stack with the tiny model and decompose a generated image")
    d.add_argument("--out", type=Path, default=Path("layerq-demo-out"))
    d.add_argument("--model", default="tiny")
    d.add_argument("--layers", type=int, default=4)
    d.add_argument("--steps", type=int, default=20)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = {"up": cmd_up, "api": cmd_api, "worker": cmd_worker, "submit": cmd_submit, "demo": cmd_demo}
    return handler[args.command](args)


def cmd_api(args: argparse.Namespace) -> int:
    Settings.from_env()  # fail fast on a malformed variable, before gunicorn forks
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(args.workers), "--bind", f"{args.host}:{args.port}",
            "--timeout", "120", "--graceful-timeout", "30", "--access-logfile", "-", "api.app:create_app()"]
    os.execv(sys.executable, argv)
    return 0  # not reached


def cmd_worker(args: argparse.Namespace) -> int:
    # OpenMP threads that spin after each parallel region steal the cores that the exports and
    # uploads need on CPU workers (halving the tiny pipeline's speed on 2 cores); set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from worker.celery_app import make_worker_app

    settings = Settings.from_env(model=args.model)
    app = make_worker_app(settings, queues=args.queues)
    # Solo pool: the model lives in the process that runs the jobs, CUDA is never initialised before
    # a fork, and concurrency is 1 (one worker per GPU).
    gpu = bool(GPU_QUEUES & set(args.queues.split(",")))
    # GPU queues: solo pool, concurrency 1 (one worker per GPU). The CPU queue (webhooks) is I/O bound:
    # a few threads, no model.
    pool = ["--pool=solo", "--concurrency=1"] if gpu else ["--pool=threads",
                                                          f"--concurrency={settings.cpu_worker_concurrency}"]
    app.worker_main(["worker", *pool, "-Q", args.queues, "-n", args.name,
                     "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"])
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from layerq.stack import LocalStack

    settings = Settings.from_env(model=args.model)
    private_redis = _wants_private_redis()
    stack = LocalStack(settings, run_dir=Path(".layerq/run"), host=args.host, port=args.port)
    print(f"starting layerq (model {settings.model}, storage {settings.storage}"
          f"{', private redis' if private_redis else ', redis ' + settings.redis_url}) ...", flush=True)
    with stack:
        stack.start(workers=args.workers, start_redis=private_redis, timeout_s=1800)
        print(f"layerq is up at {stack.url}  (logs in {stack.run_dir}; Ctrl-C stops)", flush=True)
        try:
            for proc in [stack.api, *stack.workers]:
                proc.wait()
        except KeyboardInterrupt:
            print("stopping ...", flush=True)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from layerq.client import LayerqApiError, LayerqClient
    from layerq.progress import follow_jobs

    params = json.loads(args.params)
    for name in ("layers", "resolution", "num_inference_steps", "prompt", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    client = LayerqClient(args.url)
    jobs = []
    for path in args.images:
        try:
            job = client.submit(path, params)
        except LayerqApiError as exc:
            print(f"{path}: rejected: {exc}", file=sys.stderr)
            return 2
        jobs.append((path, job))
        print(f"{path}: job {job['id']} {job['status']}")
    if not (args.wait or args.out):
        return 0
    finals = follow_jobs(client, [job["id"] for _, job in jobs])
    failed = 0
    for (path, job), final in zip(jobs, finals):
        if final["status"] != "succeeded":
            failed += 1
            print(f"{path}: {final['status']}: {final.get('error')}", file=sys.stderr)
        elif args.out:
            dest = args.out / (path.stem if len(jobs) == 1 else f"{path.stem}-{job['id'][:8]}")
            client.download(final, dest)
            print(f"{path}: {len(final['result']['layers'])} layers and exports in {dest}")
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from layerq.client import LayerqClient
    from layerq.progress import follow_jobs
    from layerq.sample import sample_png
    from layerq.stack import LocalStack

    run_dir = Path(".layerq/demo")
    settings = Settings.from_env(model=args.model, storage_dir=str(run_dir / "data"),
                                 model_cache_dir=os.environ.get("LAYERQ_MODEL_CACHE_DIR", ".layerq/models"))
    private_redis = _wants_private_redis()
    print(f"starting layerq with model {settings.model!r} (first run builds the tiny model) ...", flush=True)
    with LocalStack(settings, run_dir=run_dir) as stack:
        stack.start(workers=1, start_redis=private_redis, timeout_s=900)
        print(f"layerq is up at {stack.url}", flush=True)
        client = LayerqClient(stack.url)
        with tempfile.TemporaryDirectory() as tmp:
            image = Path(tmp) / "sample-poster.png"
            image.write_bytes(sample_png())
            job = client.submit(image, {"layers": args.layers, "num_inference_steps": args.steps,
                                        "prompt": "a sample poster with shapes and a text band"})
        print(f"submitted job {job['id']}", flush=True)
        (final,) = follow_jobs(client, [job["id"]])
        if final["status"] != "succeeded":
            print(f"job {final['status']}: {final.get('error')}", file=sys.stderr)
            return 1
        paths = client.download(final, args.out)
    print(f"\n{len(final['result']['layers'])} RGBA layers (bottom first) and exports written to {args.out.resolve()}:")
    for p in paths:
        print(f"  {p}")
    return 0


def _wants_private_redis() -> bool:
    """`up` and `demo` start their own redis-server unless a Redis is configured (or none is installed)."""
    from layerq.stack import RedisServer

    return "LAYERQ_REDIS_URL" not in os.environ and RedisServer.available()


if __name__ == "__main__":
    sys.exit(main())
