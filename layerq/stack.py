"""Run layerq's processes on one machine: a private redis-server when none is configured, the API under
gunicorn, and Celery workers. Used by `layerq up`, `layerq demo`, the end-to-end tests and the
benchmarks, so all of them exercise the same real processes a deployment runs.

The launcher owns what it starts (docs/decisions.md, "Stopping `layerq up`"): each child runs in a
process group of its own, so a terminal's Ctrl-C reaches only the launcher, which then stops the
children in order; `stop()` is bounded (warm SIGTERM, then SIGKILL after `stop_timeout_s`); and on
Linux every child gets PR_SET_PDEATHSIG, so even a launcher that is SIGKILLed or crashes leaves no
orphan running.
"""

from __future__ import annotations

import ctypes
import functools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from typing import TYPE_CHECKING

from layerq.config import Settings
from layerq.queues import WEBHOOK_QUEUE

if TYPE_CHECKING:
    from storage.workers import WorkerRegistry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout_s: float, what: str, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s" + (f": {last}" if last else ""))


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    stop_processes([proc], sig, timeout_s)


def stop_processes(procs: list[subprocess.Popen | None], sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
    """Send `sig` to the process group of each of `procs` at once, wait for all of them for at most
    `timeout_s` together, then SIGKILL the groups still running. Returns within about `timeout_s`."""
    live = [p for p in procs if p is not None and p.poll() is None]
    for proc in live:
        _signal_group(proc, sig)
    deadline = time.monotonic() + timeout_s
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        # A leader can exit before the rest of its group (a gunicorn master killed hard): whatever
        # is left of the group goes too. The group id cannot be reused while any member lives.
        _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_PR_SET_PDEATHSIG = 1


def _die_with_parent(launcher_pid: int) -> None:
    """preexec_fn (Linux): the child gets SIGTERM when the launcher dies, however it dies.

    The backstop for the one case `stop()` cannot cover: a launcher that is SIGKILLed or crashes
    hard. SIGTERM, not SIGKILL, so an orphaned worker still shuts down warm. The signal follows the
    *thread* that spawned the child, so stacks must be started from a thread that outlives them
    (the main thread, everywhere in layerq). The ctypes lookup happens before the fork (below)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked around the fork by _popen
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != launcher_pid:
            os._exit(1)  # the launcher died before prctl took effect: never start


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _popen(args: list[str], on_start=None, **kwargs) -> subprocess.Popen:
    """Popen in a process group of its own that dies with this process (see `_die_with_parent`).

    The stop signals are blocked in the launcher around the fork and until `on_start` has recorded
    the child: a signal landing in Python's at-fork hooks would be swallowed there ("Exception
    ignored"), and one raised before the child is recorded would leave it unknown to `stop()`. The
    child unblocks them in `_die_with_parent`."""
    import threading

    main = threading.current_thread() is threading.main_thread()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if main else None
    try:
        proc = subprocess.Popen(args, start_new_session=True,
                                preexec_fn=functools.partial(_die_with_parent, os.getpid()), **kwargs)
        if on_start is not None:
            on_start(proc)
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return proc


class Shutdown(BaseException):
    """Raised in the main thread by `stop_on_signals` when a termination signal arrives.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in wait loops (`wait_until`)
    does not swallow it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


REDELIVER_AFTER_S = 0.05


@contextmanager
def stop_on_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, the first SIGTERM, SIGINT or SIGHUP raises `Shutdown` in the main thread;
    later ones only print a note, so that the (bounded) stop they started is not cut short and no
    child is left behind. The previous handlers are restored on exit.

    Python runs a signal handler between any two bytecodes of the main thread, including inside a
    weakref finalizer or a `__del__` that the garbage collector happens to call there; an exception
    raised in those is printed ("Exception ignored in ...") and dropped, so the `Shutdown` would be
    lost and `layerq up` would keep running (seen once in CI). Such a dropped `Shutdown` reaches
    `sys.unraisablehook`: the hook here sends the signal again a moment later, from a short-lived
    thread, so that it lands in ordinary code, where it raises as usual."""
    import threading

    stopping = False

    def handle(signum: int, _frame) -> None:
        nonlocal stopping
        if stopping:
            print(f"{signal.Signals(signum).name}: already stopping (bounded; see --stop-timeout)", flush=True)
            return
        stopping = True
        raise Shutdown(signum)

    earlier_hook = sys.unraisablehook

    def redeliver_dropped(unraisable) -> None:
        nonlocal stopping
        if not isinstance(unraisable.exc_value, Shutdown):
            earlier_hook(unraisable)
            return
        stopping = False
        threading.Timer(REDELIVER_AFTER_S, os.kill, (os.getpid(), unraisable.exc_value.signum)).start()

    previous = {sig: signal.signal(sig, handle) for sig in signals}
    sys.unraisablehook = redeliver_dropped
    try:
        yield
    finally:
        sys.unraisablehook = earlier_hook
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class RedisServer:
    """A private redis-server on a loopback port; `persist` turns on the append-only file so a
    restart keeps queued jobs."""

    data_dir: Path
    port: int = 0
    persist: bool = False
    proc: subprocess.Popen | None = None
    extra_args: list[str] = field(default_factory=list)
    """More redis-server options (`--replicaof`, ... : layerq/redis_ha.py)."""

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        from storage.client import ping

        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
                "--save", "", "--appendonly", "yes" if self.persist else "no", "--protected-mode", "no", *self.extra_args]
        with open(self.data_dir / "redis.log", "ab") as log:
            _popen(args, on_start=lambda p: setattr(self, "proc", p), stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: ping(self.url), 10, "redis-server")
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        # SIGTERM makes redis-server flush its append-only file before it exits.
        stop_process(self.proc, sig, timeout_s)


@dataclass
class LocalStack:
    """API + workers (+ private Redis) as child processes sharing one Settings."""

    settings: Settings
    run_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    api_workers: int = 2
    stop_timeout_s: float = 30.0
    """How long `stop()` gives the API and the workers to stop warm (a worker finishes its running
    job) before it kills them; a killed worker's job is handed back (module docstring of
    worker/liveness.py). The private Redis then gets up to 10 s to flush."""
    redis: RedisServer | None = None
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    cpu_workers: list[subprocess.Popen] = field(default_factory=list)
    edit_workers: list[subprocess.Popen] = field(default_factory=list)
    """Workers on the `edit` queue (`Settings.edit_model`); a worker holds one pipeline kind."""
    _spawned: int = 0
    _workers_registry: "WorkerRegistry | None" = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(
        self, *, workers: int = 1, cpu_workers: int = 1, start_redis: bool | None = None, persist_redis: bool = False,
        timeout_s: float = 300, edit_workers: int = 0,
    ) -> "LocalStack":
        """Start everything and return once the API answers and the workers have loaded their model."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if start_redis:
            self.redis = RedisServer(self.run_dir / "redis", persist=persist_redis).start()
            self.settings = self.settings.replace(redis_url=self.redis.url)
        if self.settings.storage == "local" and not self.settings.signing_secret:
            self.settings = self.settings.replace(signing_secret=persistent_secret(self.run_dir / "signing-secret"))
        self.port = self.port or free_port()
        self._spawn_api()
        for _ in range(cpu_workers):
            self._spawn(f"cpu-{len(self.cpu_workers)}", [
                sys.executable, "-m", "layerq.cli", "worker", "--queues", WEBHOOK_QUEUE,
                "--name", f"cpu{len(self.cpu_workers)}@%h"], into=self.cpu_workers)
        for _ in range(workers):
            self.add_worker()
        for _ in range(edit_workers):
            self.add_edit_worker()
        wait_until(self._healthy(workers), timeout_s, "layerq stack", interval_s=0.25)
        wait_until(lambda: self._live_on("edit") >= edit_workers, timeout_s, "edit workers", interval_s=0.25)
        wait_until(lambda: self._live_on(WEBHOOK_QUEUE) >= cpu_workers, timeout_s, "cpu workers", interval_s=0.25)
        return self

    def add_edit_worker(self) -> subprocess.Popen:
        n = self._spawned
        self._spawned += 1
        proc = self._spawn(f"edit-worker-{n}", [sys.executable, "-m", "layerq.cli", "worker", "--queues", "edit",
                                                "--name", f"e{n}@%h"], into=self.edit_workers)
        return proc

    def replace_edit_worker(self, index: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
        """`replace_worker` for the edit workers: kill one, start a fresh one, wait until it is ready."""
        stop_process(self.edit_workers.pop(index), sig, timeout_s=30)
        name = f"e{self._spawned}@"
        proc = self.add_edit_worker()
        wait_until(lambda: self._worker_ready(name, "edit"), 300, "replacement edit worker", interval_s=0.2)
        return proc

    def _registry(self) -> "WorkerRegistry":
        # The launcher reads worker liveness through the store that owns it, like every process.
        # Through the Sentinel-aware client, so a launcher on `sentinel://` follows a failover too.
        from storage.client import options_of
        from storage.workers import WorkerRegistry

        if self._workers_registry is None:
            self._workers_registry = WorkerRegistry.from_url(self.settings.redis_url,
                                                             key_prefix=self.settings.key_prefix,
                                                             options=options_of(self.settings))
        return self._workers_registry

    def _live_on(self, queue: str) -> int:
        return self._registry().live_count(queue, within_s=30)

    def add_worker(self, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        n = self._spawned
        self._spawned += 1
        proc = self._spawn(f"worker-{n}", [sys.executable, "-m", "layerq.cli", "worker", "--name", f"w{n}@%h"],
                           extra_env, into=self.workers)
        return proc

    def replace_worker(self, index: int, sig: int = signal.SIGKILL, wait: bool = True) -> subprocess.Popen:
        """Kill worker `index` (SIGKILL by default: no chance to clean up) and start a fresh one in
        its place, as a process supervisor would."""
        old = self.workers[index]
        stop_process(old, sig, timeout_s=30)
        self.workers.pop(index)
        name = f"w{self._spawned}@"
        proc = self.add_worker()
        if wait:
            wait_until(lambda: self._worker_ready(name), 120, "replacement worker", interval_s=0.1)
        return proc

    def _worker_ready(self, name_prefix: str, queue: str = "decompose") -> bool:
        return any(m.startswith(name_prefix) for m in self._registry().names(queue))

    def restart_api(self, timeout_s: float = 60) -> None:
        """Stop the API process and start a new one on the same port (state lives in Redis and storage)."""
        stop_process(self.api)
        self._spawn_api()
        wait_until(self._healthy(1), timeout_s, "restarted API", interval_s=0.2)

    def wait_for_workers(self, count: int, timeout_s: float = 300) -> None:
        wait_until(self._healthy(count), timeout_s, f"{count} workers", interval_s=0.25)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop everything this stack started, within `timeout_s` (default `stop_timeout_s`) + 10 s.

        Workers and API get SIGTERM together (Celery's warm shutdown: the running job finishes;
        gunicorn finishes its requests); what still runs after `timeout_s` is killed. Redis stops
        last, so the workers can ack or hand back their jobs first."""
        stop_processes([*self.workers, *self.edit_workers, *self.cpu_workers, self.api],
                       timeout_s=self.stop_timeout_s if timeout_s is None else timeout_s)
        if self.redis:
            self.redis.stop()

    def wait_any(self, poll_s: float = 0.5) -> subprocess.Popen:
        """Block until the API or a worker exits; return that process."""
        while True:
            for proc in [self.api, *self.workers, *self.edit_workers, *self.cpu_workers]:
                if proc is not None and proc.poll() is not None:
                    return proc
            time.sleep(poll_s)

    def _healthy(self, workers: int):
        def check() -> bool:
            for proc in [self.api, *self.workers, *self.edit_workers, *self.cpu_workers]:
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"a layerq process exited with {proc.returncode}; logs in {self.run_dir}")
            body = requests.get(self.url + "/healthz", timeout=2).json()
            return body["status"] == "ok" and body["workers"] >= workers

        return check

    def _spawn_api(self) -> subprocess.Popen:
        return self._spawn("api", into=None, on_start=lambda p: setattr(self, "api", p), args=[
            sys.executable, "-m", "layerq.cli", "api", "--host", self.host,
            "--port", str(self.port), "--workers", str(self.api_workers)])

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None, *,
               into: list[subprocess.Popen] | None = None, on_start=None) -> subprocess.Popen:
        """Start a child; `into` (or `on_start`) records it before a stop signal can interrupt (`_popen`)."""
        env = {**os.environ, **self.settings.as_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with open(self.run_dir / f"{name}.log", "ab") as log:
            return _popen(args, on_start=on_start or (into.append if into is not None else None), env=env,
                          stdout=log, stderr=subprocess.STDOUT)

    def __enter__(self) -> "LocalStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def persistent_secret(path: Path) -> str:
    """A signing secret kept on disk, so download URLs stay valid across restarts of `layerq up`."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret)
    return secret
