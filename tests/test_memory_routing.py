"""Routing by GPU memory class (issue 17) through real processes: a real Redis, the API under
gunicorn, real Celery workers running the tiny pipeline on CPU, each given a memory budget by
LAYERQ_GPU_MEMORY_GIB as a 24 GB or a 48 GB card would have.

The fleet is configured as `LAYERQ_MEMORY_CLASSES=48,24`: a job no configured class fits is refused at
once; a job that fits only the 48 GB class waits in its queue until a 48 GB worker is there (a class
configured but momentarily without a live worker is a rolling restart or a scale-up away, not an
error); small jobs go to the 24 GB class's queue, which the 48 GB worker serves too.
The tests run in file order and share one stack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import redis
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png
from layerq.stack import stop_process
from storage.keys import Keys
from tests.helpers import wait_for, wait_running

pytestmark = pytest.mark.e2e

SMALL = {"layers": 2, "num_inference_steps": 2, "prompt": "a poster"}  # fits every class
LONG_SMALL = {**SMALL, "num_inference_steps": 60}
NEEDS_48 = {"layers": 3, "resolution": 1024, "num_inference_steps": 2, "prompt": "a poster"}  # 23.2 GiB
STATE: dict[str, str] = {}  # what one test leaves for the next (they share the stack, in order)
NEEDS_80 = {"layers": 8, "resolution": 1024, "num_inference_steps": 2, "prompt": "a poster"}  # 48.2 GiB


@pytest.fixture(scope="module")
def stack(make_stack):
    stack = make_stack(workers=0, memory_classes="48,24", worker_heartbeat_s=1, enqueue_grace_s=1)
    stack.add_worker(extra_env={"LAYERQ_GPU_MEMORY_GIB": "22"})  # w0: a 24 GB-class worker
    wait_for(lambda: _live(stack, "24"), 300, interval_s=0.25, what="the 24 GB-class worker")
    return stack


@pytest.fixture(scope="module")
def client(stack):
    return LayerqClient(stack.url, timeout_s=60)


def _health(stack) -> dict:
    return requests.get(stack.url + "/healthz", timeout=10).json()


def _live(stack, memory_class: str) -> list[dict]:
    return [w for w in _health(stack)["live_workers"] if w.get("memory_class") == memory_class]


def post_job(stack, params):
    files = {"image": ("poster.png", sample_png(256, 256), "image/png")}
    return requests.post(stack.url + "/v1/jobs", files=files, data={"params": json.dumps(params)}, timeout=30)


def record(stack, job_id: str) -> dict:
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    return r.hgetall(Keys(stack.settings.key_prefix).job(job_id))


def queued_total(stack) -> int:
    r = redis.Redis.from_url(stack.settings.redis_url)
    return sum(r.zcard(k) for k in r.scan_iter(f"{stack.settings.key_prefix}:queued:*"))


def test_healthz_shows_each_worker_with_its_memory_class_and_budget(stack):
    body = _health(stack)
    assert body["status"] == "ok" and body["workers"] == 1 and body["memory_classes"] == ["48", "24"]
    (worker,) = body["live_workers"]
    assert worker["name"].startswith("w0@") and worker["kind"] == "decompose"
    assert worker["memory_class"] == "24" and worker["memory_budget_gib"] == 22.0
    assert worker["queues"] == ["decompose.24", "decompose.16"]  # never the 48 or 80 GB classes' queues


def test_a_job_no_configured_class_fits_is_refused_at_once_naming_the_field(stack):
    before = queued_total(stack)
    resp = post_job(stack, NEEDS_80)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "exceeds_gpu_memory" and error["field"] == "params.layers"
    assert "48 GB-class" in error["message"] and "at most 7 layers at resolution 1024" in error["message"]
    batch = {"defaults": SMALL, "items": [{"input_key": "uploads/a/b"}, {"input_key": "uploads/c/d", "params": NEEDS_80}]}
    resp = requests.post(stack.url + "/v1/batches", json=batch, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "items.1.params.layers"
    assert queued_total(stack) == before  # nothing recorded, nothing enqueued


def test_a_small_job_runs_on_the_small_class_worker(stack, client):
    job = post_job(stack, SMALL).json()
    final = client.wait(job["id"], timeout_s=120)
    assert final["status"] == "succeeded", final
    rec = record(stack, job["id"])
    assert rec["queue"] == "decompose.24" and rec["worker"].startswith("w0@")
    # Decomposing one of its layers again is routed (and refused) the same way.
    body = {"source": {"job_id": job["id"], "layer": 0}, "params": NEEDS_80}
    resp = requests.post(stack.url + "/v1/layersets/decompose", json=body, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "params.layers", resp.text
    body["params"] = SMALL
    again = client.wait(requests.post(stack.url + "/v1/layersets/decompose", json=body, timeout=10).json()["id"],
                        timeout_s=120)
    assert again["status"] == "succeeded" and record(stack, again["id"])["queue"] == "decompose.24"


def test_a_job_for_a_configured_class_without_a_live_worker_waits_for_one(stack, client):
    big = post_job(stack, NEEDS_48).json()
    assert big["status"] == "queued" and record(stack, big["id"])["queue"] == "decompose.48"
    later = client.wait(post_job(stack, SMALL).json()["id"], timeout_s=120)  # small jobs flow past it
    assert later["status"] == "succeeded"
    waiting = client.get(big["id"])
    assert waiting["status"] == "queued" and waiting["queue_position"] == 0
    metrics = requests.get(stack.url + "/metrics", timeout=10).text
    # A single job is `interactive` (fair admission's default); depth is reported per queue and priority.
    assert 'layerq_queue_depth{priority="interactive",queue="decompose.48"} 1.0' in metrics

    # A batch spanning classes' queues is cancelled out of all of them.
    batch = {"defaults": NEEDS_48, "items": [{"file": "a"}, {"file": "b", "params": {"resolution": 640}}]}
    files = {n: (f"{n}.png", sample_png(64, 64), "image/png") for n in ("a", "b")}
    resp = requests.post(stack.url + "/v1/batches", data={"batch": json.dumps(batch)}, files=files, timeout=30)
    assert resp.status_code == 202, resp.text
    ids = resp.json()["job_ids"]
    assert [record(stack, i)["queue"] for i in ids] == ["decompose.48", "decompose.24"]
    cancel = requests.post(f"{stack.url}/v1/batches/{resp.json()['id']}/cancel", timeout=10).json()
    assert cancel["canceled"] + cancel["already_finished"] + cancel["canceling"] == 2
    r = redis.Redis.from_url(stack.settings.redis_url)
    assert r.zrank(Keys(stack.settings.key_prefix).queued("decompose.48"), ids[0]) is None
    STATE["big_job"] = big["id"]


def test_a_big_class_worker_takes_the_waiting_job_and_a_dead_small_workers_job(stack, client):
    # The 24 GB worker dies (SIGKILL) while running a small job; a 48 GB worker then starts: it runs
    # the job that waited for its class, and, watching the 24 GB class's queue too, puts the dead
    # worker's job back and runs it.
    small = post_job(stack, LONG_SMALL).json()
    wait_running(client, small["id"], min_step=1, timeout_s=120)
    assert record(stack, small["id"])["worker"].startswith("w0@")
    stop_process(stack.workers[0], signal.SIGKILL, timeout_s=30)
    stack.add_worker(extra_env={"LAYERQ_GPU_MEMORY_GIB": "46"})  # w1: a 48 GB-class worker
    big = client.wait(STATE["big_job"], timeout_s=300)
    again = client.wait(small["id"], timeout_s=300)
    assert big["status"] == "succeeded" and again["status"] == "succeeded", (big, again)
    assert record(stack, STATE["big_job"])["worker"].startswith("w1@")
    rec = record(stack, small["id"])
    assert rec["worker"].startswith("w1@") and rec["attempts"] == "2" and rec["queue"] == "decompose.24"
    (worker,) = _health(stack)["live_workers"]  # the dead one was reaped
    assert worker["memory_class"] == "48" and worker["queues"] == ["decompose.48", "decompose.24", "decompose.16"]


def test_jobs_an_api_recorded_but_never_sent_are_sent_on_their_class_queue(stack, client):
    from layerq import objects
    from layerq.params import DecomposeParams
    from storage.factory import open_object_store
    from storage.jobs import JobStore, NewJob, new_job_id

    jobs = JobStore.from_url(stack.settings.redis_url, key_prefix=stack.settings.key_prefix)
    store = open_object_store(stack.settings)
    orphans = []
    for queue in ("decompose.48", "decompose.24"):
        job_id = new_job_id()
        store.put(objects.input_key(job_id), sample_png(96, 96), "image/png")
        params = DecomposeParams(**SMALL, seed=1).model_dump()
        orphans.append(NewJob(job_id, params, objects.input_key(job_id), queue=queue))
    jobs.create_many(orphans)  # recorded, never sent: the sweeper sends them after LAYERQ_ENQUEUE_GRACE_S
    finals = [client.wait(j.job_id, timeout_s=120) for j in orphans]
    assert [f["status"] for f in finals] == ["succeeded"] * 2


def test_a_worker_refuses_a_class_queue_its_budget_cannot_serve(stack, tmp_path):
    env = {**os.environ, **stack.settings.as_env(), "LAYERQ_GPU_MEMORY_GIB": "22"}
    done = subprocess.run([sys.executable, "-m", "layerq.cli", "worker", "--queues", "decompose.48"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "cannot run that queue's jobs" in done.stderr, done.stderr
