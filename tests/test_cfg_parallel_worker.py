"""`layerq worker --cfg-parallel --gpus 0,1` (issue 14): a supervised pair of real processes serves jobs.

On the CPU with the tiny model and gloo: the supervisor starts rank 0 (the Celery worker) and rank 1
(the follower), a job through the API succeeds with its uncond passes on rank 1, and SIGKILLing rank 1
mid-job neither hangs nor fails the job: rank 0 leaves, the pair restarts, and the job is handed back
and finishes once, on its second attempt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from layerq.client import LayerqClient
from layerq.sample import sample_png
from tests.helpers import terminal_transitions, wait_for, wait_running

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 3, "prompt": "a poster"}
LONG = {"layers": 2, "num_inference_steps": 120, "prompt": "a poster"}


def ranks_of(supervisor: psutil.Process) -> dict[int, psutil.Process]:
    """The pair's live processes by rank (rank 1 runs `worker.cfg_follower`)."""
    out = {}
    for child in supervisor.children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out[1 if "worker.cfg_follower" in child.cmdline() else 0] = child
        except psutil.NoSuchProcess:
            pass
    return out


def test_a_pair_serves_jobs_and_survives_losing_rank_1(make_stack, tmp_path):
    stack = make_stack(workers=0, storage="local", worker_heartbeat_s=1, cfg_parallel_timeout_s=30)
    env = {**os.environ, **stack.settings.as_env(), "PYTHONUNBUFFERED": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    log_path = tmp_path / "pair.log"
    proc = subprocess.Popen([sys.executable, "-m", "layerq.cli", "worker", "--cfg-parallel", "--gpus", "0,1",
                             "--drain-timeout-s", "60"],
                            env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    supervisor = psutil.Process(proc.pid)
    client = LayerqClient(stack.url, timeout_s=60)
    try:
        ranks = wait_for(lambda: len(ranks_of(supervisor)) == 2 and ranks_of(supervisor), 60, what="both ranks")
        for rank in ranks.values():
            assert rank.environ()["CUDA_VISIBLE_DEVICES"] == "0,1"
            assert rank.environ()["LAYERQ_CFG_PARALLEL_PEER"].startswith("127.0.0.1:")
        assert "gpu0-1@%h" in ranks[0].cmdline()

        done = client.wait(client.submit(sample_png(160, 128), QUICK)["id"], timeout_s=300)
        assert done["status"] == "succeeded", done
        assert len(done["result"]["layers"]) == 2

        job = client.submit(sample_png(160, 128), LONG)
        wait_running(client, job["id"], min_step=2, timeout_s=120)
        ranks[1].send_signal(signal.SIGKILL)
        # Rank 0 does not wait out a timeout: gloo sees the closed connection, the worker leaves
        # (exit 75, logged below) and its job's message stays unacknowledged for the reaper.
        ranks[0].wait(20)  # psutil.TimeoutExpired if it hung
        restarted = wait_for(lambda: len(r := ranks_of(supervisor)) == 2 and r[0].pid != ranks[0].pid and r,
                             120, interval_s=0.2, what="the pair restarted")
        final = client.wait(job["id"], timeout_s=600)
        assert final["status"] == "succeeded", final
        assert final["attempts"] == 2
        assert len(terminal_transitions(stack, job["id"])) == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
        gone, alive = psutil.wait_procs(list(restarted.values()), timeout=30)
        assert not alive, f"ranks outlived their supervisor: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(log_path.read_text(errors="replace")[-4000:])
    text = log_path.read_text(errors="replace")
    assert "restarting in" in text and "CFG-parallel peer lost" in text and "exiting so the pair restarts" in text


def test_pairs_take_the_gpus_two_by_two():
    from worker.supervisor import Supervisor

    sup = Supervisor(["0", "1", "2", "3"], ["layerq-worker"], 1.0, environ={}, metrics_port=9100, cfg_parallel=True)
    assert [[c.gpu for c in g] for g in sup.groups] == [["0,1", "0,1"], ["2,3", "2,3"]]
    lead, follower = sup.groups[1]
    assert lead.argv[-2:] == ["--name", "gpu2-3@%h"] and lead.extra_env["LAYERQ_WORKER_METRICS_PORT"] == "9101"
    assert follower.argv[-2:] == ["-m", "worker.cfg_follower"]
    with pytest.raises(ValueError, match="two by two"):
        Supervisor(["0", "1", "2"], ["layerq-worker"], 1.0, environ={}, cfg_parallel=True)
    plain = Supervisor(["0", "1"], ["layerq-worker"], 1.0, environ={})
    assert [[c.gpu for c in g] for g in plain.groups] == [["0"], ["1"]]
