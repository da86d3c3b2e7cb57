"""The `layerq` command: run the stack (`up`, `api`, `worker`), submit images (`submit`) and the
one-command demo (`demo`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from layerq import cli_layersets, keys_cli
from layerq.config import Settings
from layerq.logs import setup_logging
from layerq.queues import DECOMPOSE_QUEUE, GPU_QUEUES

SUBCOMMANDS = ("up", "api", "worker", "submit", "edit", "demo", "compose", "combine", "keys")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerq", description="Decompose images into editable RGBA layers.")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="API + one worker + embedded storage on this machine")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--model", help="hub id, local directory, or 'tiny' (default: LAYERQ_MODEL)")
    up.add_argument("--workers", type=int, default=1, help="worker processes (one per GPU)")
    up.add_argument("--edit-workers", type=int, default=1, help="edit worker processes (they hold the edit model)")
    up.add_argument("--edit-model", help="edit model: hub id, local dir or 'tiny' (default: LAYERQ_EDIT_MODEL; "
                                         "'tiny' when --model is tiny)")
    _add_stop_timeout(up)

    api = sub.add_parser("api", help="the HTTP API under gunicorn")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=4, help="gunicorn worker processes")
    api.add_argument("--threads", type=int, help="threads per process (default: LAYERQ_API_THREADS; 1: sync)")

    w = sub.add_parser("worker", help="a Celery worker (one per GPU; loads the model once)")
    w.add_argument("--model", help="hub id, local directory, or 'tiny' (default: LAYERQ_MODEL)")
    w.add_argument("--queues", default=DECOMPOSE_QUEUE,
                   help="comma-separated; `decompose` (default): every decompose queue of this worker's GPU memory "
                        "class (LAYERQ_GPU_MEMORY_GIB or the card's memory) and the smaller classes'")
    w.add_argument("--name", default="layerq@%h")
    w.add_argument("--loglevel", default="INFO")
    w.add_argument("--gpus", help="`all` or indices like 0,1: supervise one worker per GPU (worker/supervisor.py)")
    w.add_argument("--cfg-parallel", action="store_true",
                   help="with --gpus: two GPUs per worker, one job's prompt and negative-prompt passes on both at once")
    w.add_argument("--drain-timeout-s", type=float,
                   help="with --gpus: how long SIGTERM waits for running jobs (default: LAYERQ_JOB_TIME_LIMIT_S + 30)")

    s = sub.add_parser("submit", help="submit images, optionally wait and download the results")
    s.add_argument("images", nargs="+", type=Path)
    s.add_argument("--url", default=os.environ.get("LAYERQ_API_URL", "http://127.0.0.1:8000"))
    s.add_argument("--params", default="{}", help="job parameters as a JSON object")
    s.add_argument("--layers", type=_layer_count, help='2-10, or "auto"')
    s.add_argument("--resolution", type=int)
    s.add_argument("--steps", dest="num_inference_steps", type=int)
    s.add_argument("--prompt")
    s.add_argument("--seed", type=int)
    s.add_argument("--key", default=os.environ.get("LAYERQ_API_KEY"), help="API key (LAYERQ_AUTH=keys servers)")
    s.add_argument("--wait", action="store_true", help="follow the jobs' event streams, with a progress bar")
    s.add_argument("--out", type=Path, help="download results here (implies --wait)")

    from layerq.edit_cli import add_edit_parser

    add_edit_parser(sub)

    d = sub.add_parser("demo", help="start the stack and decompose a generated poster (classic decomposer)")
    d.add_argument("--out", type=Path, default=Path("layerq-demo-out"))
    # classic: layers that mean something on any machine (the tiny model's are noise; `--model tiny`
    # runs the real pipeline classes instead).
    d.add_argument("--model", default="classic", help="classic (default; no GPU, no weights), tiny, or a hub id")
    d.add_argument("--layers", type=int, default=4)
    d.add_argument("--steps", type=int, default=20)
    _add_stop_timeout(d)
    cli_layersets.add_parsers(sub)
    keys_cli.add_parser(sub)
    return p


def _add_stop_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stop-timeout", type=float, default=30.0, metavar="SECONDS",
        help="on SIGTERM, SIGINT (Ctrl-C) or SIGHUP, how long workers may finish their running job "
             "before they are killed and the job is handed back to the queue (default 30; Redis gets 10 s more)")


def _layer_count(text: str) -> int | str:
    """`--layers 5` or `--layers auto` (the API validates the range)."""
    return text if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(os.environ.get("LAYERQ_LOG_FORMAT", "text"))  # before Settings, which may log
    from layerq.edit_cli import cmd_edit

    handler = {"up": cmd_up, "api": cmd_api, "worker": cmd_worker, "submit": cmd_submit, "edit": cmd_edit,
               "demo": cmd_demo, "compose": cli_layersets.cmd_compose, "combine": cli_layersets.cmd_combine,
               "keys": keys_cli.cmd_keys}
    return handler[args.command](args)


def cmd_api(args: argparse.Namespace) -> int:
    settings = Settings.from_env()  # fail fast on a malformed variable, before gunicorn forks
    argv = [sys.executable, "-m", "gunicorn", "--workers", str(args.workers), "--bind", f"{args.host}:{args.port}",
            *_api_worker_class(args.threads or settings.api_threads), "--config", "python:api.gunicorn_conf",
            "--timeout", "120", "--graceful-timeout", "30", "--access-logfile", "-",
            # gunicorn answers an over-long request line itself, in HTML; lift its limit (it still
            # stops at 1 MiB) so that the API answers 414 in its JSON error shape (api/contract.py).
            "--limit-request-line", "0", "api.app:create_app()"]
    _prepare_multiprocess_metrics()
    os.execv(sys.executable, argv)
    return 0  # not reached


def _prepare_multiprocess_metrics() -> None:
    """prometheus-client's multiprocess mode: every gunicorn process writes its metrics under
    PROMETHEUS_MULTIPROC_DIR and /metrics adds them up. A fresh private directory unless one is
    given; a given one is emptied, since files left by an earlier run would be counted again."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="layerq-metrics-")
        os.environ["LAYERQ_OWNS_METRICS_DIR"] = "1"  # api/gunicorn_conf.py removes it on exit
        return
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):
        stale.unlink()


def _api_worker_class(threads: int) -> list[str]:
    """gunicorn's threaded worker: a slow upload holds one thread, not a whole process (a sync worker
    is held by one slow body, and six of them stopped the API answering /livez). A process accepts no
    more connections than it has threads, so one whose threads are all held leaves new connections in
    the listen queue for the others instead of queueing them behind slow bodies; the price is no
    HTTP keep-alive (docs/decisions.md)."""
    if threads <= 1:
        return ["--worker-class", "sync"]
    return ["--worker-class", "gthread", "--threads", str(threads), "--worker-connections", str(threads),
            "--keep-alive", "0"]


def cmd_worker(args: argparse.Namespace) -> int:
    # OpenMP threads that spin after each parallel region steal the cores that the exports and
    # uploads need on CPU workers (halving the tiny pipeline's speed on 2 cores); set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.gpus:
        return _supervise_gpu_workers(args)
    if args.cfg_parallel:
        print("--cfg-parallel needs --gpus (two GPUs per worker, e.g. --gpus 0,1)", file=sys.stderr)
        return 2
    from worker.celery_app import make_worker_app

    settings = Settings.from_env(model=args.model)
    if "edit" in args.queues.split(",") and args.model:  # an edit worker's --model is its edit model
        settings = settings.replace(edit_model=args.model)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    memory = None
    if _wants_decompose(queues):
        # The memory class decides which decompose queues this worker consumes (issue 17).
        from worker.memory_budget import resolve_queues, worker_memory

        memory = worker_memory(settings)
        try:
            queues = resolve_queues(queues, memory, settings)
        except ValueError as exc:
            print(f"layerq worker: {exc}", file=sys.stderr)
            return 2
    app = make_worker_app(settings, queues=",".join(queues), memory=memory)
    # Solo pool: the model lives in the process that runs the jobs, CUDA is never initialised before
    # a fork, and concurrency is 1 (one worker per GPU).
    gpu = bool(GPU_QUEUES & set(queues))
    # GPU queues: solo pool, concurrency 1 (one worker per GPU). The CPU queue (webhooks) is I/O bound:
    # a few threads, no model.
    pool = ["--pool=solo", "--concurrency=1"] if gpu else ["--pool=threads",
                                                          f"--concurrency={settings.cpu_worker_concurrency}"]
    app.worker_main(["worker", *pool, "-Q", ",".join(queues), "-n", args.name,
                     "--loglevel", args.loglevel, "--without-gossip", "--without-mingle"])
    return 0


def _wants_decompose(queues: list[str]) -> bool:
    from layerq.queues import DECOMPOSE_QUEUES

    return any(q in DECOMPOSE_QUEUES for q in queues)


def _supervise_gpu_workers(args: argparse.Namespace) -> int:
    """`--gpus`: this process only supervises; each GPU gets its own `layerq worker` (no torch here)."""
    from worker.supervisor import Supervisor, default_drain_timeout_s, discover_gpus, worker_argv

    settings = Settings.from_env(model=args.model)
    drain_s = args.drain_timeout_s if args.drain_timeout_s is not None else default_drain_timeout_s(settings.job_time_limit_s)
    gpus = discover_gpus(args.gpus)
    return Supervisor(gpus, worker_argv(args.model, args.queues, args.loglevel), drain_s,
                      metrics_port=settings.worker_metrics_port, cfg_parallel=args.cfg_parallel).run()


def cmd_up(args: argparse.Namespace) -> int:
    from layerq.stack import LocalStack, Shutdown, stop_on_signals

    settings = Settings.from_env(model=args.model)
    settings = _with_up_edit_model(settings, args.edit_model)
    private_redis = _wants_private_redis()
    stack = LocalStack(settings, run_dir=Path(".layerq/run"), host=args.host, port=args.port,
                       stop_timeout_s=args.stop_timeout)
    print(f"starting layerq (model {settings.model}, storage {settings.storage}"
          f"{', private redis' if private_redis else ', redis ' + settings.redis_url}) ...", flush=True)
    # Signals first, then the stack: a signal at any point of the start-up still stops (the
    # stack's __exit__) everything started so far. The private Redis persists (append-only file), so
    # queued jobs and jobs handed back by a killed worker survive a restart of `layerq up`.
    with stop_on_signals(), stack:
        try:
            stack.start(workers=args.workers, start_redis=private_redis, persist_redis=True, timeout_s=1800,
                        edit_workers=args.edit_workers)
            print(f"layerq is up at {stack.url}  (logs in {stack.run_dir}; Ctrl-C or SIGTERM stops)", flush=True)
            gone = stack.wait_any()
        except Shutdown as sig:
            print(f"{sig}: stopping (workers get {args.stop_timeout:g} s to finish their job) ...", flush=True)
            return 0
        # One process ended on its own: stop the rest rather than run half a service.
        print(f"a layerq process (pid {gone.pid}) exited with {gone.returncode}; stopping "
              f"(logs in {stack.run_dir}) ...", file=sys.stderr, flush=True)
        return 1


def _with_up_edit_model(settings: Settings, explicit: str | None) -> Settings:
    """`up` pairs a tiny decompose model (`tiny`, or a directory the model builder stamped tiny) with the
    tiny edit model, built next to it, unless an edit model is named; else LAYERQ_EDIT_MODEL's."""
    if explicit or os.environ.get("LAYERQ_EDIT_MODEL"):
        return settings.replace(edit_model=explicit or settings.edit_model)
    stamp = Path(settings.model) / "layerq-model.json"
    if settings.model == "tiny":
        return settings.replace(edit_model="tiny")
    try:
        tiny_dir = json.loads(stamp.read_text()).get("size") == "tiny"
    except (OSError, ValueError):
        tiny_dir = False
    if not tiny_dir:
        return settings
    cache = settings.model_cache_dir if os.environ.get("LAYERQ_MODEL_CACHE_DIR") else str(Path(settings.model).parent)
    return settings.replace(edit_model="tiny", model_cache_dir=cache)


def cmd_submit(args: argparse.Namespace) -> int:
    from layerq.client import LayerqApiError, LayerqClient
    from layerq.progress import follow_jobs

    params = json.loads(args.params)
    for name in ("layers", "resolution", "num_inference_steps", "prompt", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    client = LayerqClient(args.url, api_key=args.key)
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
    from layerq.stack import LocalStack, Shutdown, stop_on_signals

    run_dir = Path(".layerq/demo")
    settings = Settings.from_env(model=args.model, storage_dir=str(run_dir / "data"),
                                 model_cache_dir=os.environ.get("LAYERQ_MODEL_CACHE_DIR", ".layerq/models"))
    private_redis = _wants_private_redis()
    note = " (first run builds the tiny model)" if settings.model == "tiny" else ""
    print(f"starting layerq with model {settings.model!r}{note} ...", flush=True)
    try:
        # As in `up`: a signal at any point stops everything started so far, within the bound.
        with stop_on_signals(), LocalStack(settings, run_dir=run_dir, stop_timeout_s=args.stop_timeout) as stack:
            stack.start(workers=1, start_redis=private_redis, timeout_s=900)
            print(f"layerq is up at {stack.url}", flush=True)
            return _run_demo_job(args, stack.url)
    except Shutdown as sig:
        print(f"{sig}: stopped", file=sys.stderr, flush=True)
        return 1


def _run_demo_job(args: argparse.Namespace, url: str) -> int:
    from layerq.client import LayerqClient
    from layerq.progress import follow_jobs
    from layerq.sample import sample_png

    client = LayerqClient(url)
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
