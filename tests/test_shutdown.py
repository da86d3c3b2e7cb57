"""`layerq up` owns what it starts: a termination signal sent to its pid alone stops the API (gunicorn
and its workers), the Celery workers and its private redis-server within the documented bound, and a
job running at that moment is handed back and ends `succeeded` exactly once after a restart.

These tests run `layerq up` itself as a subprocess, in a directory of their own (its `.layerq/run`),
with the tiny model. Leftovers are found two ways: the process tree recorded before the signal, and
any process whose working directory is the test's directory (children inherit it), which also
catches a process started after the tree was recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png
from layerq.stack import RedisServer, free_port
from tests.helpers import terminal_transitions, transition_log, wait_for, wait_running

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not RedisServer.available(), reason="`layerq up` starts a private redis-server: none installed"),
]

ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_S = 3.0
# The bound `layerq up` promises: --stop-timeout for API and workers, then 10 s for Redis to flush.
# The margin covers a loaded test machine (interpreter exit, reaping), not extra waiting by layerq.
BOUND_S = STOP_TIMEOUT_S + 10 + 20


class Up:
    """One `layerq up` (or, with `command="demo"`, `layerq demo`) process started in `cwd`."""

    def __init__(self, cwd: Path, model_dir: Path, stop_timeout_s: float = STOP_TIMEOUT_S, command: str = "up") -> None:
        self.cwd, self.port = cwd, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERQ_")}
        env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", LAYERQ_DEVICE="cpu", LAYERQ_WORKER_HEARTBEAT_S="1")
        self.log = cwd / f"{command}-{self.port}.log"
        args = ["--port", str(self.port)] if command == "up" else ["--steps", "200", "--out", str(cwd / "out")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "layerq.cli", command, "--model", str(model_dir), *args,
                 "--stop-timeout", str(stop_timeout_s)],
                cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 300) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, f"layerq up exited with {self.proc.returncode}:\n{self.output()}"
            try:
                body = requests.get(self.url + "/healthz", timeout=2).json()
            except requests.RequestException:
                return False
            return body["status"] == "ok" and body["workers"] >= 1

        wait_for(ready, timeout_s, interval_s=0.25, what="layerq up healthy")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def redis_url(self) -> str:
        # redis-server rewrites its command line, so its port is read from its listening socket.
        server = next(p for p in self.descendants() if p.name() == "redis-server")
        port = next(c.laddr.port for c in server.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
        return f"redis://127.0.0.1:{port}/0"

    def signal_and_wait(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(BOUND_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"layerq up still running {BOUND_S} s after {signal.Signals(sig).name}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def leftovers(tree: list[psutil.Process], cwd: Path) -> list[str]:
    """Processes of `tree`, or with their working directory in `cwd`, that still run (zombies are
    dead: only not yet reaped by whoever inherited them)."""
    _, alive = psutil.wait_procs(tree, timeout=5)
    found = {p.pid: p for p in alive}
    for p in psutil.process_iter(["cwd"]):
        if p.pid != os.getpid() and p.info["cwd"] and Path(p.info["cwd"]).is_relative_to(cwd):
            found[p.pid] = p
    out = []
    for p in found.values():
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture
def up_dir(tmp_path: Path):
    made: list[Up] = []

    def start(**kwargs) -> Up:
        made.append(Up(tmp_path, **kwargs))
        return made[-1]

    yield start
    for up in made:  # a failed test must not leak the processes it is about
        up.kill()
        for p in leftovers([], tmp_path):
            os.kill(int(p.split()[0]), signal.SIGKILL)


def test_sigterm_stops_everything_up_started(up_dir, tiny_model_dir, tmp_path):
    up = up_dir(model_dir=tiny_model_dir)
    up.wait_ready()
    tree = up.descendants()
    names = [p.name() for p in tree]
    assert "redis-server" in names and len(tree) >= 4, names  # redis, gunicorn master + workers, celery
    assert up.signal_and_wait(signal.SIGTERM) == 0, up.output()
    assert leftovers(tree, tmp_path) == []


def test_sighup_during_startup_leaves_no_orphan(up_dir, tiny_model_dir, tmp_path):
    up = up_dir(model_dir=tiny_model_dir)
    # Mid start-up: Redis and some of the others are running, the workers have not loaded the model.
    wait_for(lambda: {"redis-server"} <= {p.name() for p in up.descendants()} and len(up.descendants()) >= 2,
             120, interval_s=0.05, what="start-up under way")
    tree = up.descendants()
    up.signal_and_wait(signal.SIGHUP)
    assert leftovers(tree, tmp_path) == []


def test_job_running_at_sigterm_is_handed_back_and_succeeds_once_after_restart(up_dir, tiny_model_dir, tmp_path):
    up = up_dir(model_dir=tiny_model_dir)
    up.wait_ready()
    client = LayerqClient(up.url, timeout_s=60)
    # Long enough to outlast --stop-timeout: the worker is killed mid-job, not let finish.
    job = client.submit(sample_png(128, 128), {"layers": 2, "num_inference_steps": 200, "prompt": "a poster"})
    wait_running(client, job["id"], min_step=1, timeout_s=180)
    tree = up.descendants()
    assert up.signal_and_wait(signal.SIGTERM) == 0, up.output()
    assert leftovers(tree, tmp_path) == []

    # Same directory: the same persistent private Redis (its append-only file) and storage.
    again = up_dir(model_dir=tiny_model_dir)
    again.wait_ready()
    client = LayerqClient(again.url, timeout_s=60)
    final = client.wait(job["id"], timeout_s=400)
    assert final["status"] == "succeeded", final.get("error")
    assert final["attempts"] == 2  # the delivery killed at shutdown and the one after the restart
    state = SimpleNamespace(settings=SimpleNamespace(redis_url=again.redis_url(), key_prefix="layerq"))
    assert len(terminal_transitions(state, job["id"])) == 1, transition_log(state, job["id"])


def test_sigterm_stops_the_demo_mid_job(up_dir, tiny_model_dir, tmp_path):
    demo = up_dir(model_dir=tiny_model_dir, command="demo")
    wait_for(lambda: "submitted job" in demo.output() or demo.proc.poll() is not None, 300, interval_s=0.2,
             what="the demo's job submitted")
    assert demo.proc.poll() is None, demo.output()
    tree = demo.descendants()
    demo.signal_and_wait(signal.SIGTERM)
    assert leftovers(tree, tmp_path) == []


def test_children_stop_even_when_up_itself_is_sigkilled(up_dir, tiny_model_dir, tmp_path):
    """The backstop (Linux): PR_SET_PDEATHSIG sends each child SIGTERM when `layerq up` dies."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    up = up_dir(model_dir=tiny_model_dir)
    up.wait_ready()
    tree = up.descendants()
    up.kill()  # SIGKILL: no handler, no finally
    # Warm: the idle workers and gunicorn stop on their SIGTERM; allow the same bound as a stop.
    psutil.wait_procs(tree, timeout=BOUND_S)
    assert leftovers(tree, tmp_path) == []
