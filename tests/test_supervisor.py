"""`layerq worker --gpus 0,1` (issue 11, point 1): one supervised worker process per GPU.

On the CPU with the tiny model: the supervisor starts two real Celery worker processes with distinct
CUDA_VISIBLE_DEVICES and node names, starts a SIGKILLed one again, and SIGTERM drains them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import psutil
import pytest
import redis

from layerq.config import Settings
from tests.helpers import wait_for
from worker.supervisor import discover_gpus, node_name

pytestmark = pytest.mark.e2e


def test_gpu_list_parsing_and_all_honours_visible_devices():
    assert discover_gpus("0,1") == ["0", "1"]
    assert discover_gpus(" 3 ") == ["3"]
    assert discover_gpus("all", {"CUDA_VISIBLE_DEVICES": "2,5"}) == ["2", "5"]
    with pytest.raises(ValueError):
        discover_gpus("0,0")
    with pytest.raises(ValueError):
        discover_gpus(",")
    assert node_name("1") == "gpu1@%h"


def workers_of(supervisor: psutil.Process) -> dict[str, psutil.Process]:
    """The supervisor's live worker children by the GPU they are pinned to."""
    out = {}
    for child in supervisor.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out[child.environ()["CUDA_VISIBLE_DEVICES"]] = child
        except (psutil.NoSuchProcess, KeyError):
            pass
    return out


def live_names(r: redis.Redis, prefix: str) -> set[str]:
    return {m.split("#")[0] for m in r.zrange(f"{prefix}:workers:decompose", 0, -1)}


def test_supervisor_pins_restarts_and_drains_one_worker_per_gpu(redis_url, tiny_model_dir, tmp_path):
    prefix = f"t{uuid.uuid4().hex[:8]}"
    settings = Settings.from_env(environ={}, redis_url=redis_url, key_prefix=prefix, model=str(tiny_model_dir),
                                 device="cpu", storage_dir=str(tmp_path / "data"), worker_heartbeat_s=1,
                                 signing_secret="test-signing-secret")
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    log = open(tmp_path / "supervisor.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "layerq.cli", "worker", "--gpus", "0,1", "--drain-timeout-s", "60"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    supervisor = psutil.Process(proc.pid)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    host = os.uname().nodename
    try:
        workers = wait_for(lambda: len(workers_of(supervisor)) == 2 and workers_of(supervisor), 60, what="2 workers")
        assert set(workers) == {"0", "1"}
        for gpu, p in workers.items():
            assert p.cmdline()[p.cmdline().index("--name") + 1] == f"gpu{gpu}@%h"
        # Each loads the model and reports live under its own node name.
        wait_for(lambda: live_names(r, prefix) == {f"gpu0@{host}", f"gpu1@{host}"}, 300, interval_s=0.5,
                 what="both workers live")

        killed = workers["1"]
        killed.send_signal(signal.SIGKILL)
        restarted = wait_for(lambda: (w := workers_of(supervisor).get("1")) and w.pid != killed.pid and w, 60,
                             what="GPU 1's worker restarted")
        assert restarted.environ()["CUDA_VISIBLE_DEVICES"] == "1"
        assert workers_of(supervisor)["0"].pid == workers["0"].pid, "the other GPU's worker is left alone"
        wait_for(lambda: any(m.startswith(f"gpu1@{host}#{restarted.pid}-")
                             for m in r.zrange(f"{prefix}:workers:decompose", 0, -1)),
                 300, interval_s=0.5, what="the restarted worker live")

        children = [workers["0"], restarted]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"workers outlived their supervisor: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert b"restarting in" in (tmp_path / "supervisor.log").read_bytes()
