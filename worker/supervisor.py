"""One GPU worker process per GPU, supervised: `layerq worker --gpus all|0,1,...`.

The supervisor never imports torch or touches CUDA: it finds the GPUs from NVML (pynvml, when
installed), `nvidia-smi -L` or /proc/driver/nvidia/gpus, and starts one `layerq worker` per GPU with
`CUDA_VISIBLE_DEVICES` pinned to it and its own Celery node name `gpu<N>@<host>`. Each child loads its
pipeline once, in its own process. A child that exits while the supervisor is not stopping is started
again after a backoff that doubles per consecutive crash up to `MAX_BACKOFF_S` (a child that stayed up
`STABLE_AFTER_S` starts the count again). SIGTERM or SIGINT drains: each child gets SIGTERM (Celery's
warm shutdown: the running job finishes, nothing new is taken), and whatever still runs after
`drain_timeout_s` is killed. A second signal kills at once. Children also get SIGTERM from the kernel
should the supervisor itself die (PR_SET_PDEATHSIG), so they are never orphaned.

With `--cfg-parallel` the GPUs are taken two by two: each pair runs one `layerq worker` (rank 0, the
Celery worker) and one `python -m worker.cfg_follower` (rank 1, the negative-prompt passes; see
worker/accel/cfg_parallel.py), both seeing the pair's two GPUs and meeting at a fresh loopback port.
A pair lives and dies together: when either exits, the other is stopped (SIGTERM, then SIGKILL after
`PAIR_STOP_GRACE_S`) and both start again after the same backoff.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("layerq.supervisor")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 120.0
POLL_S = 0.2
PAIR_STOP_GRACE_S = 30.0
PR_SET_PDEATHSIG = 1


def discover_gpus(spec: str, environ: dict[str, str] | None = None) -> list[str]:
    """The GPUs `--gpus` names: `all`, or a comma-separated list of indices (or GPU UUIDs).

    `all` honours a CUDA_VISIBLE_DEVICES the supervisor was given (a container handed some GPUs),
    else asks NVML, then `nvidia-smi -L`, then /proc/driver/nvidia/gpus. Indices are in PCI bus
    order, as NVML and nvidia-smi number them; children get CUDA_DEVICE_ORDER=PCI_BUS_ID to match.
    """
    environ = os.environ if environ is None else environ
    if spec.strip() != "all":
        gpus = [g.strip() for g in spec.split(",") if g.strip()]
        if not gpus:
            raise ValueError("--gpus: name at least one GPU, or `all`")
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"--gpus: a GPU is listed twice in {spec!r}")
        return gpus
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible:
        return [g.strip() for g in visible.split(",") if g.strip()]
    for probe in (_nvml_count, _nvidia_smi_count, _proc_count):
        count = probe()
        if count:
            return [str(i) for i in range(count)]
    raise RuntimeError("--gpus all: no NVIDIA GPU found (NVML, nvidia-smi and /proc/driver/nvidia all say none)")


def _nvml_count() -> int:
    try:
        import pynvml  # optional: nvidia-ml-py
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver
        return 0


def _nvidia_smi_count() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return 0
    return len(re.findall(r"^GPU \d+:", out, flags=re.M))


def _proc_count() -> int:
    root = Path("/proc/driver/nvidia/gpus")
    return len(list(root.iterdir())) if root.is_dir() else 0


def node_name(gpu: str) -> str:
    """Celery node name of the worker on `gpu` (`%h` is the host name, filled in by Celery)."""
    return f"gpu{re.sub(r'[^A-Za-z0-9-]', '', gpu)}@%h"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM if the supervisor dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: orphans are then possible, as without a supervisor
        pass


@dataclass
class Child:
    gpu: str
    argv: list[str]
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    stop_sent_at: float | None = None  # a pair: when the survivors of a member's exit were told to stop

    def start(self, environ: dict[str, str]) -> None:
        env = {**environ, "CUDA_VISIBLE_DEVICES": self.gpu, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", **self.extra_env}
        # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which forwards one
        # SIGTERM (a second signal would turn Celery's warm shutdown into a cold one).
        self.proc = subprocess.Popen(self.argv, env=env, preexec_fn=_die_with_parent, process_group=0)
        self.started_at = time.monotonic()
        self.restart_at = None
        log.info("worker for GPU %s started (pid %d)", self.gpu, self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


@dataclass
class Supervisor:
    """Starts `worker_argv + ["--name", node_name(gpu)]` once per GPU and keeps them running."""

    gpus: list[str]
    worker_argv: list[str]
    drain_timeout_s: float
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    _stopping: int = 0

    metrics_port: int = 0

    cfg_parallel: bool = False
    groups: list[list[Child]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Each worker serves its own metrics: the worker on the i-th GPU (or pair) listens on metrics_port + i.
        def metrics_env(i: int) -> dict[str, str]:
            return {"LAYERQ_WORKER_METRICS_PORT": str(self.metrics_port + i if self.metrics_port > 0 else 0)}

        if not self.cfg_parallel:
            self.groups = [[Child(gpu, [*self.worker_argv, "--name", node_name(gpu)], extra_env=metrics_env(i))]
                           for i, gpu in enumerate(self.gpus)]
        else:
            if len(self.gpus) % 2:
                raise ValueError(f"--cfg-parallel takes GPUs two by two; {len(self.gpus)} named")
            follower = [sys.executable, "-m", "worker.cfg_follower"]
            for i in range(len(self.gpus) // 2):
                a, b = self.gpus[2 * i], self.gpus[2 * i + 1]
                visible = f"{a},{b}"  # both ranks see both GPUs; rank r uses the r-th (NCCL peers by bus id)
                self.groups.append([
                    Child(visible, [*self.worker_argv, "--name", node_name(f"{a}-{b}")], extra_env=metrics_env(i)),
                    Child(visible, follower),
                ])
        self.children = [child for group in self.groups for child in group]

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for group in self.groups:
            if not self._stopping:
                self._start_group(group)
        while not self._stopping:
            self._restart_crashed(time.monotonic())
            time.sleep(POLL_S)
        return self._drain()

    def _on_signal(self, signum: int, _frame) -> None:
        self._stopping += 1
        if self._stopping == 1:
            log.info("%s: draining %d workers (running jobs finish, up to %.0f s)",
                     signal.Signals(signum).name, len(self.children), self.drain_timeout_s)
            for child in self.children:
                child.signal(signal.SIGTERM)  # Celery's warm shutdown
        else:
            log.warning("second signal: killing the workers now")
            for child in self.children:
                child.signal(signal.SIGKILL)

    def _start_group(self, group: list[Child]) -> None:
        if len(group) > 1:  # a CFG-parallel pair meets at a port of its own, fresh for every start
            peer = f"127.0.0.1:{_free_port()}"
            for child in group:
                child.extra_env["LAYERQ_CFG_PARALLEL_PEER"] = peer
        for child in group:
            child.start(self.environ)

    def _restart_crashed(self, now: float) -> None:
        for group in self.groups:
            exited = [c for c in group if c.proc is not None and not c.running()]
            if not exited:
                continue
            lead = group[0]  # the Celery worker; a pair's backoff is kept on it
            if lead.restart_at is None:
                if any(c.running() for c in group):  # one rank of a pair exited: stop the other
                    if lead.stop_sent_at is None:
                        lead.stop_sent_at = now
                        log.warning("a rank of the CFG-parallel pair on GPUs %s exited with %s; stopping the other",
                                    lead.gpu, exited[0].proc.returncode)
                        for child in group:
                            child.signal(signal.SIGTERM)
                    elif now - lead.stop_sent_at >= PAIR_STOP_GRACE_S:
                        for child in group:
                            child.signal(signal.SIGKILL)
                    continue
                lead.stop_sent_at = None
                code = exited[0].proc.returncode
                if now - lead.started_at >= STABLE_AFTER_S:
                    lead.crashes = 0
                lead.crashes += 1
                delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (lead.crashes - 1))
                lead.restart_at = now + delay
                log.warning("worker for GPU %s exited with %s; restarting in %.0f s", lead.gpu, code, delay)
            elif now >= lead.restart_at:
                self._start_group(group)

    def _drain(self) -> int:
        deadline = time.monotonic() + self.drain_timeout_s
        while any(c.running() for c in self.children) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for child in self.children:
            if child.running():
                log.warning("worker for GPU %s still running after %.0f s: killing it", child.gpu, self.drain_timeout_s)
                child.signal(signal.SIGKILL)
        for child in self.children:
            if child.proc is not None:
                child.proc.wait()
        log.info("all workers stopped")
        return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_drain_timeout_s(job_time_limit_s: float) -> float:
    """How long SIGTERM waits for running jobs: the longest a job may run, plus half a minute to
    write its results (deployments give the supervisor a minute more than the limit)."""
    return job_time_limit_s + 30


def worker_argv(model: str | None, queues: str, loglevel: str) -> list[str]:
    """The command line of one child: `layerq worker` without `--gpus`."""
    argv = [sys.executable, "-m", "layerq.cli", "worker", "--queues", queues, "--loglevel", loglevel]
    return argv + (["--model", model] if model else [])
