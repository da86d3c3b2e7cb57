"""Cancel, idempotency, batches, uploads, the result cache and dry runs, through real processes."""

from __future__ import annotations

import json
import time

import pytest
import redis
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png
from tests.helpers import drain, job_objects, terminal_transitions, transition_log, wait_for, wait_running

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 2, "prompt": "a poster"}
LONG = {"layers": 2, "num_inference_steps": 80, "prompt": "a poster"}


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(storage="local")


@pytest.fixture(scope="module")
def client(stack):
    return LayerqClient(stack.url, timeout_s=60)


def post_job(stack, params, image=None, headers=None, extra=None):
    data = {"params": json.dumps(params), **(extra or {})}
    files = {"image": ("poster.png", image or sample_png(256, 256), "image/png")}
    return requests.post(stack.url + "/v1/jobs", files=files, data=data, headers=headers or {}, timeout=30)


# --- cancel --------------------------------------------------------------------------------------

def test_cancel_queued_and_running_jobs(stack, client):
    running = client.submit(sample_png(256, 256), LONG)
    queued = client.submit(sample_png(256, 256), QUICK)
    wait_running(client, running["id"], min_step=2)

    resp = requests.post(f"{stack.url}/v1/jobs/{queued['id']}/cancel", timeout=10).json()
    assert resp["job"]["status"] == "canceled" and resp["changed"] and "before it started" in resp["message"]

    resp = requests.post(f"{stack.url}/v1/jobs/{running['id']}/cancel", timeout=10).json()
    assert resp["job"]["status"] in ("canceling", "canceled") and resp["changed"]
    final = client.wait(running["id"], timeout_s=60)
    assert final["status"] == "canceled" and final["result"] is None
    assert final["progress"]["step"] < LONG["num_inference_steps"]  # stopped mid-way, not run out
    assert job_objects(stack, running["id"]) == [f"jobs/{running['id']}/input.png"]  # no result objects

    # The queued job never started, even once the worker took its message (and logged the skip).
    worker_log = stack.run_dir / "worker-0.log"
    wait_for(lambda: f"job {queued['id']} not run: canceled" in worker_log.read_text(errors="replace"), 60,
             interval_s=0.2, what="the canceled job's message skipped")
    assert all("running" not in entry for entry in transition_log(stack, queued["id"]))
    assert client.get(queued["id"])["status"] == "canceled"

    again = requests.post(f"{stack.url}/v1/jobs/{running['id']}/cancel", timeout=10).json()
    assert again["changed"] is False and "already canceled" in again["message"]
    assert len(terminal_transitions(stack, running["id"])) == 1


def test_cancelling_a_finished_job_is_harmless(stack, client):
    done = client.wait(client.submit(sample_png(128, 128), QUICK)["id"], timeout_s=60)
    resp = requests.post(f"{stack.url}/v1/jobs/{done['id']}/cancel", timeout=10)
    assert resp.status_code == 200
    body = resp.json()
    assert body["changed"] is False and "already succeeded" in body["message"]
    assert client.get(done["id"])["status"] == "succeeded"


def test_cancel_a_whole_batch(stack, client):
    images = {f"f{i}": (f"{i}.png", sample_png(128 + 32 * i, 128), "image/png") for i in range(4)}
    batch = {"defaults": LONG, "items": [{"file": name} for name in images]}
    resp = requests.post(stack.url + "/v1/batches", files=images, data={"batch": json.dumps(batch)}, timeout=30)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    wait_running(client, body["job_ids"][0], min_step=1)
    outcome = requests.post(f"{stack.url}/v1/batches/{body['id']}/cancel", timeout=10).json()
    assert outcome["canceled"] == 3 and outcome["canceling"] == 1
    finals = [client.wait(j, timeout_s=60) for j in body["job_ids"]]
    assert {f["status"] for f in finals} == {"canceled"}
    summary = requests.get(f"{stack.url}/v1/batches/{body['id']}", timeout=10).json()
    assert summary["counts"]["canceled"] == 4 and summary["counts"]["queued"] == 0 and summary["counts"]["running"] == 0


# --- idempotency -----------------------------------------------------------------------------------

def test_idempotency_key_replays_and_conflicts(stack):
    headers = {"Idempotency-Key": f"key-{time.time_ns()}"}
    first = post_job(stack, {**QUICK, "seed": 3}, headers=headers)
    assert first.status_code == 202
    replay = post_job(stack, {**QUICK, "seed": 3}, headers=headers)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"] and replay.headers["Location"] == first.headers["Location"]
    other = post_job(stack, {**QUICK, "seed": 4}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    # Another tenant may use the same key for its own request.
    theirs = post_job(stack, {**QUICK, "seed": 4}, headers={**headers, "Authorization": "Bearer other"})
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_idempotent_batches(stack):
    headers = {"Idempotency-Key": f"batch-{time.time_ns()}"}
    images = {"a": ("a.png", sample_png(128, 128), "image/png")}
    batch = json.dumps({"defaults": QUICK, "items": [{"file": "a"}]})
    first = requests.post(stack.url + "/v1/batches", files=images, data={"batch": batch}, headers=headers, timeout=30)
    again = requests.post(stack.url + "/v1/batches", files=images, data={"batch": batch}, headers=headers, timeout=30)
    assert first.status_code == again.status_code == 202 and first.json() == again.json()
    changed = json.dumps({"defaults": {**QUICK, "layers": 3}, "items": [{"file": "a"}]})
    conflict = requests.post(stack.url + "/v1/batches", files=images, data={"batch": changed}, headers=headers,
                             timeout=30)
    assert conflict.status_code == 409


# --- uploads and batches ---------------------------------------------------------------------------

def upload(stack, data: bytes) -> str:
    ticket = requests.post(stack.url + "/v1/uploads", json={"content_type": "image/png"}, timeout=10)
    assert ticket.status_code == 201, ticket.text
    t = ticket.json()
    put = requests.request(t["method"], t["url"], data=data, headers=t["headers"], timeout=30)
    assert put.status_code == 200, put.text
    return t["input_key"]


def test_batch_of_uploads_and_files_with_overrides(stack, client):
    k1, k2 = upload(stack, sample_png(300, 200)), upload(stack, sample_png(200, 300))
    batch = {"defaults": QUICK, "items": [{"input_key": k1}, {"input_key": k2, "params": {"layers": 3}},
                                          {"file": "img"}]}
    resp = requests.post(stack.url + "/v1/batches", files={"img": ("x.png", sample_png(256, 256), "image/png")},
                         data={"batch": json.dumps(batch)}, timeout=30)
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["count"] == 3 and len(body["job_ids"]) == 3
    finals = [client.wait(j, timeout_s=120) for j in body["job_ids"]]
    assert [f["status"] for f in finals] == ["succeeded"] * 3
    assert [len(f["result"]["layers"]) for f in finals] == [2, 3, 2]
    assert all(f["batch_id"] == body["id"] for f in finals)

    summary = requests.get(f"{stack.url}/v1/batches/{body['id']}", timeout=10).json()
    assert summary["counts"]["succeeded"] == 3 and summary["progress"] == 1.0 and summary["eta_s"] == 0.0
    page = requests.get(f"{stack.url}/v1/jobs", params={"batch": body["id"], "limit": 2}, timeout=10).json()
    assert [j["id"] for j in page["items"]] == body["job_ids"][:2] and page["next_cursor"]
    rest = requests.get(f"{stack.url}/v1/jobs", params={"batch": body["id"], "cursor": page["next_cursor"]},
                        timeout=10).json()
    assert [j["id"] for j in rest["items"]] == body["job_ids"][2:] and rest["next_cursor"] is None
    only = requests.get(f"{stack.url}/v1/jobs", params={"batch": body["id"], "status": "failed"}, timeout=10).json()
    assert only["items"] == []


def test_uploaded_garbage_fails_its_job_cleanly(stack, client):
    key = upload(stack, b"not an image at all")
    resp = requests.post(stack.url + "/v1/jobs", json={"input_key": key, "params": QUICK}, timeout=10)
    assert resp.status_code == 202
    final = client.wait(resp.json()["id"], timeout_s=60)
    assert final["status"] == "failed" and final["error"]["code"] == "invalid_image"


def test_batch_validation_names_the_item_and_creates_nothing(stack):
    r = redis.Redis.from_url(stack.settings.redis_url)
    before = len(list(r.scan_iter(f"{stack.settings.key_prefix}:batch:*")))
    bad = {"defaults": QUICK, "items": [{"input_key": "uploads/a/b"}, {"input_key": "uploads/c/d",
                                                                        "params": {"layers": 1}}]}
    resp = requests.post(stack.url + "/v1/batches", json=bad, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "items.1.params.layers"
    too_many = {"items": [{"input_key": "uploads/a/b"}] * 10_001}
    resp = requests.post(stack.url + "/v1/batches", json=too_many, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "items"
    assert len(list(r.scan_iter(f"{stack.settings.key_prefix}:batch:*"))) == before


# --- result cache ----------------------------------------------------------------------------------

def test_repeated_job_is_served_from_the_cache(stack, client):
    image = sample_png(200, 160)
    params = {**QUICK, "seed": 42}
    first = client.wait(post_job(stack, params, image=image).json()["id"], timeout_s=60)
    assert first["status"] == "succeeded"

    again = post_job(stack, params, image=image)
    assert again.status_code == 200  # answered at once, not accepted for later
    cached = again.json()
    assert cached["status"] == "succeeded" and cached["cached_from"] == first["id"] and cached["attempts"] == 0
    assert requests.get(cached["result"]["layers"][0]["url"], timeout=10).content == \
        requests.get(first["result"]["layers"][0]["url"], timeout=10).content

    # Opting out, another seed or another tenant: the job runs.
    assert post_job(stack, params, image=image, extra={"cache": "false"}).status_code == 202
    assert post_job(stack, {**params, "seed": 43}, image=image).status_code == 202
    assert post_job(stack, params, image=image, headers={"Authorization": "Bearer someone"}).status_code == 202

    # The cache lives in Redis: it survives an API restart...
    stack.restart_api()
    assert post_job(stack, params, image=image).json()["cached_from"] == first["id"]
    # ...and ends with the retention of the job it points to.
    r = redis.Redis.from_url(stack.settings.redis_url)
    r.delete(f"{stack.settings.key_prefix}:job:{first['id']}")
    assert post_job(stack, params, image=image).status_code == 202


def test_a_job_that_opts_out_of_the_cache_neither_reads_nor_writes_it(stack, client):
    image = sample_png(184, 152)
    params = {**QUICK, "seed": 44}
    first = client.wait(post_job(stack, params, image=image).json()["id"], timeout_s=60)
    assert first["status"] == "succeeded"
    # The opt-out runs although an identical job finished (no read)...
    opted_out = post_job(stack, params, image=image, extra={"cache": "false"})
    assert opted_out.status_code == 202 and opted_out.json()["cached_from"] is None
    assert client.wait(opted_out.json()["id"], timeout_s=60)["status"] == "succeeded"
    # ...and, finished, does not take the entry over (no write): the next request is still the first's.
    again = post_job(stack, params, image=image)
    assert again.status_code == 200 and again.json()["cached_from"] == first["id"]
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    assert not r.hget(f"{stack.settings.key_prefix}:job:{opted_out.json()['id']}", "cache_key")


# --- dry run -------------------------------------------------------------------------------------

def test_dry_run_estimates_without_enqueueing(stack, client):
    params = {"layers": 2, "num_inference_steps": 6, "prompt": "a poster"}
    for i in range(5):  # recent measured service times for this bucket
        client.wait(client.submit(sample_png(256, 256), {**params, "seed": 100 + i})["id"], timeout_s=60)
    drain(stack)

    r = redis.Redis.from_url(stack.settings.redis_url)
    prefix = stack.settings.key_prefix
    before = (r.llen(f"{prefix}:decompose"), len(list(r.scan_iter(f"{prefix}:job:*"))))
    images = {f"f{i}": (f"{i}.png", sample_png(256, 256), "image/png") for i in range(6)}
    batch = {"defaults": params, "items": [{"file": n} for n in images], "cache": False}
    dry = requests.post(stack.url + "/v1/batches", files=images,
                        data={"batch": json.dumps({**batch, "dry_run": True})}, timeout=30)
    assert dry.status_code == 200, dry.text
    estimate = dry.json()
    assert estimate["dry_run"] and estimate["count"] == 6 and estimate["estimated_gpu_s"] > 0
    assert (r.llen(f"{prefix}:decompose"), len(list(r.scan_iter(f"{prefix}:job:*")))) == before

    t0 = time.time()
    real = requests.post(stack.url + "/v1/batches", files=images, data={"batch": json.dumps(batch)}, timeout=30).json()
    for job_id in real["job_ids"]:
        client.wait(job_id, timeout_s=120, poll_s=0.05)
    measured = time.time() - t0
    assert abs(estimate["estimated_completion_s"] - measured) <= 0.25 * measured, (estimate, measured)
