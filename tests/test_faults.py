"""Faults, through real processes: workers SIGKILLed mid-job, a Redis restart, a poison job.

This module's stack has its own persistent redis-server (so the test may restart it) and workers that
beat every second, so a dead worker's job is put back within about three seconds."""

from __future__ import annotations

import signal
import time

import pytest

from layerq.client import LayerqClient
from layerq.sample import sample_png
from tests.helpers import job_objects, terminal_transitions, transition_log, wait_running

pytestmark = pytest.mark.e2e

PARAMS = {"layers": 2, "num_inference_steps": 24, "prompt": "a poster"}
TRIALS = 10


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(storage="local", own_redis=True, worker_heartbeat_s=1.0)


@pytest.fixture(scope="module")
def client(stack):
    return LayerqClient(stack.url, timeout_s=60)


def expected_objects(job_id: str, layers: int) -> list[str]:
    names = ["composite.png", "exports/layers.pptx", "exports/layers.psd", "exports/layers.zip", "input.png",
             "manifest.json", *[f"layers/{i:02d}.png" for i in range(layers)]]
    return sorted(f"jobs/{job_id}/{n}" for n in names)


def test_sigkilled_worker_mid_job_each_job_succeeds_exactly_once(stack, client):
    for trial in range(TRIALS):
        job = client.submit(sample_png(256, 192), {**PARAMS, "seed": trial})
        wait_running(client, job["id"], min_step=2, timeout_s=120)
        stack.replace_worker(0, signal.SIGKILL)
        final = client.wait(job["id"], timeout_s=180)
        assert final["status"] == "succeeded", (trial, final.get("error"))
        assert final["attempts"] == 2, trial  # the killed delivery and the one that finished
        assert len(terminal_transitions(stack, job["id"])) == 1, transition_log(stack, job["id"])
        assert job_objects(stack, job["id"]) == expected_objects(job["id"], PARAMS["layers"])


def test_redis_restart_loses_no_job(stack, client):
    jobs = [client.submit(sample_png(200, 200), {**PARAMS, "num_inference_steps": 12, "seed": i}) for i in range(4)]
    wait_running(client, jobs[0]["id"], min_step=1, timeout_s=120)
    stack.redis.stop(signal.SIGTERM)  # a clean restart: the append-only file is flushed
    stack.redis.start()
    finals = [client.wait(j["id"], timeout_s=240) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 4, [f.get("error") for f in finals]
    for j in jobs:
        assert len(terminal_transitions(stack, j["id"])) == 1


def test_poison_job_fails_after_three_deliveries_while_others_complete(stack, client):
    poison = client.submit(sample_png(256, 256), {**PARAMS, "num_inference_steps": 60, "seed": 666})
    others = [client.submit(sample_png(128, 128), {**PARAMS, "num_inference_steps": 4, "seed": i}) for i in range(3)]
    kills, killed_attempt = 0, 0
    while client.get(poison["id"])["status"] not in ("failed", "succeeded"):
        # The job kills whichever worker runs it (as an input that crashes the process would): each
        # new delivery (a higher attempt number) is killed once it has started denoising.
        job = client.get(poison["id"])
        if job["status"] == "running" and job["attempts"] > killed_attempt and job["progress"]["step"] >= 1:
            killed_attempt = job["attempts"]
            stack.replace_worker(0, signal.SIGKILL)
            kills += 1
        assert kills <= 3
        time.sleep(0.05)
    final = client.get(poison["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost" and kills == 3
    assert [client.wait(o["id"], timeout_s=180)["status"] for o in others] == ["succeeded"] * 3


def test_jobs_recorded_by_an_api_that_died_before_sending_are_sent(stack, client):
    """As if the API process died between writing a batch's records and sending its messages."""
    from layerq import objects as keys
    from layerq.params import DecomposeParams
    from storage.factory import open_object_store
    from storage.jobs import JobStore, NewJob, new_job_id

    settings = stack.settings
    jobs = JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    store = open_object_store(settings)
    orphans = []
    for i in range(3):
        job_id = new_job_id()
        store.put(keys.input_key(job_id), sample_png(128, 128), "image/png")
        params = DecomposeParams(layers=2, num_inference_steps=2, prompt="x", seed=i).model_dump()
        orphans.append(NewJob(job_id, params, keys.input_key(job_id)))
    jobs.create_many(orphans)  # recorded, never sent
    # Backdate them past the grace period instead of waiting a minute.
    import redis

    from storage.keys import Keys

    redis.Redis.from_url(settings.redis_url).zadd(Keys(settings.key_prefix).unsent("decompose"),
                                                  {j.job_id: 1.0 for j in orphans})
    finals = [client.wait(j.job_id, timeout_s=120) for j in orphans]
    assert [f["status"] for f in finals] == ["succeeded"] * 3
    assert jobs.unsent_since(0) == []
