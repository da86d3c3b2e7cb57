"""Edit jobs through real processes: a decompose worker and an edit worker with the tiny models, one
stack for the module (an edit costs ~10 s of CPU, so the jobs are few and use 2-4 steps).

Decompose → edit a layer → a new layer set that differs from its parent only in that layer and what
depends on it; an edit of the edit (chained); bad sources refused naming the field with nothing
enqueued; cancel at the next step; a SIGKILLed edit worker's job redelivered and finished once."""

from __future__ import annotations

import io
import json
import signal
import zipfile
from datetime import datetime

import numpy as np
import pytest
import redis
import requests
from PIL import Image

from layerq.client import LayerqApiError, LayerqClient
from layerq.sample import sample_png
from tests.helpers import job_objects, terminal_transitions, transition_log, wait_for, wait_running

pytestmark = pytest.mark.e2e

EDIT = {"num_inference_steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(storage="local", edit_workers=1, worker_heartbeat_s=1.0, export_formats="psd,pptx,zip,ora")


@pytest.fixture(scope="module")
def client(stack):
    return LayerqClient(stack.url, timeout_s=60)


@pytest.fixture(scope="module")
def parent(client):
    job = client.submit(sample_png(96, 64), {"layers": 3, "num_inference_steps": 2, "prompt": "a poster", "seed": 1})
    final = client.wait(job["id"], timeout_s=300)
    assert final["status"] == "succeeded", final.get("error")
    return final


def fetch(url: str) -> bytes:
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    return resp.content


def pixels(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(url))).convert("RGBA"))


def jobs_and_queued_edits(stack) -> int:
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    jobs = [k for k in r.scan_iter(f"{stack.settings.key_prefix}:job:*", count=1000) if not k.endswith(":log")]
    return r.zcard(f"{stack.settings.key_prefix}:queued:edit") + len(jobs)


def test_edit_replaces_one_layer_and_chains(stack, client, parent):
    job = client.edit(parent["id"], 1, "make it red", {**EDIT, "matte": "chroma"})
    assert job["kind"] == "edit" and job["status"] in ("queued", "running", "succeeded")
    assert job["params"]["source"] == {"job_id": parent["id"], "layer": 1}
    edited = client.wait(job["id"], timeout_s=300)
    assert edited["status"] == "succeeded", edited.get("error")
    assert edited["progress"] == {"stage": "done", "step": 2, "total": 2}

    old, new = parent["result"], edited["result"]
    assert [(x["width"], x["height"]) for x in new["layers"]] == [(x["width"], x["height"]) for x in old["layers"]]
    for i, (a, b) in enumerate(zip(old["layers"], new["layers"])):
        same = np.array_equal(pixels(a["url"]), pixels(b["url"]))
        assert same == (i != 1), f"layer {i}: {'unchanged' if i == 1 else 'changed'}"
    layer = pixels(new["layers"][1]["url"])
    assert layer.shape[:2] == (old["layers"][1]["height"], old["layers"][1]["width"])  # the source's size
    assert len(np.unique(layer[..., 3])) > 1, "the chroma matte gave the layer a real alpha, not a constant"
    assert not np.array_equal(pixels(old["composite"]), pixels(new["composite"]))

    manifest = json.loads(fetch(new["manifest"]))
    assert manifest["kind"] == "edit" and manifest["parent"] == {"job_id": parent["id"], "layer": 1}
    assert manifest["changed_layers"] == [1] and manifest["params"]["prompt"] == "make it red"
    assert sorted(new["exports"]) == ["ora", "pptx", "psd", "zip"]
    for url in new["exports"].values():
        assert fetch(url)
    with zipfile.ZipFile(io.BytesIO(fetch(new["exports"]["zip"]))) as z:
        assert len([n for n in z.namelist() if n.endswith(".png") and n.startswith("layer")]) == 3

    # An edit of the edit's layer 1, keeping its alpha bit for bit.
    chained = client.wait(client.edit(edited["id"], 1, "make it blue", {**EDIT, "matte": "keep"})["id"], timeout_s=300)
    assert chained["status"] == "succeeded", chained.get("error")
    again = pixels(chained["result"]["layers"][1]["url"])
    assert np.array_equal(again[..., 3], layer[..., 3])
    assert json.loads(fetch(chained["result"]["manifest"]))["parent"] == {"job_id": edited["id"], "layer": 1}
    # Lineage: the job view links each edit to the layer it was made from (and the reaper reads the
    # same links to keep a source's objects while an edit of it is unfinished).
    assert client.get(chained["id"])["parent"] == {"job_id": edited["id"], "layer": 1}
    assert client.get(edited["id"])["parent"] == {"job_id": parent["id"], "layer": 1}
    assert chained["id"] in client.get(edited["id"])["children"]
    assert edited["id"] in client.get(parent["id"])["children"]

    # The same request again is answered by the result cache (same source layer, params and seed).
    cached = client.edit(edited["id"], 1, "make it blue", {**EDIT, "matte": "keep"})
    assert cached["status"] == "succeeded" and cached["cached_from"] == chained["id"]


def test_bad_sources_are_refused_naming_the_field_and_nothing_is_enqueued(stack, client, parent):
    running = client.submit(sample_png(64, 64), {"layers": 2, "num_inference_steps": 200, "seed": 3})
    before = jobs_and_queued_edits(stack)
    cases = [
        ({"source": {"job_id": parent["id"], "layer": 1}, "params": {}}, 400, "params.prompt"),
        ({"source": {"job_id": parent["id"], "layer": 1}, "params": {"prompt": "  "}}, 400, "params.prompt"),
        ({"source": {"job_id": "f" * 32, "layer": 0}, "params": {"prompt": "x"}}, 404, "source.job_id"),
        ({"source": {"job_id": parent["id"], "layer": 3}, "params": {"prompt": "x"}}, 400, "source.layer"),
        ({"source": {"job_id": running["id"], "layer": 0}, "params": {"prompt": "x"}}, 400, "source.job_id"),
        ({"source": {"job_id": parent["id"], "layer": 0}, "params": {"prompt": "x", "matte": "model"}}, 400,
         "params.matte"),
        ({"params": {"prompt": "x"}}, 400, "source"),
    ]
    for body, status, field in cases:
        resp = requests.post(f"{stack.url}/v1/edits", json=body, timeout=30)
        assert resp.status_code == status, (body, resp.text)
        assert resp.json()["error"]["field"] == field, (body, resp.text)
    # Another tenant's job reads as absent.
    resp = requests.post(f"{stack.url}/v1/edits", json={"source": {"job_id": parent["id"], "layer": 0},
                         "params": {"prompt": "x"}}, headers={"Authorization": "Bearer someone-else"}, timeout=30)
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "source.job_id"
    with pytest.raises(LayerqApiError) as err:
        client.edit(parent["id"], -1, "x")
    assert err.value.field == "source.layer"
    assert jobs_and_queued_edits(stack) == before
    client.http.post(f"{stack.url}/v1/jobs/{running['id']}/cancel", timeout=30)
    client.wait(running["id"], timeout_s=120)


def test_cancel_a_running_edit(stack, client, parent):
    job = client.edit(parent["id"], 0, "make it green", {"num_inference_steps": 200, "seed": 9})
    wait_running(client, job["id"], min_step=1, timeout_s=300)
    resp = requests.post(f"{stack.url}/v1/jobs/{job['id']}/cancel", timeout=30).json()
    assert resp["job"]["status"] == "canceling"
    final = client.wait(job["id"], timeout_s=120)
    assert final["status"] == "canceled" and final["progress"]["step"] < 200
    assert not [k for k in job_objects(stack, job["id"]) if not k.endswith("input.png")]


def test_an_edit_carries_its_priority_and_retain_s_and_streams_its_events(stack, client, parent):
    body = {"source": {"job_id": parent["id"], "layer": 0}, "params": {**EDIT, "prompt": "make it blue"},
            "priority": "bulk", "retain_s": 3600, "cache": False}
    resp = requests.post(f"{stack.url}/v1/edits", json=body, timeout=60)
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["kind"] == "edit" and job["priority"] == "bulk" and job["retained_until"] is None
    events = list(client.events(f"/v1/jobs/{job['id']}/events"))
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and "progress" in names, names
    final = events[-1][1]
    assert final["status"] == "succeeded" and final["result"]["layers"], final.get("error")
    finished = datetime.fromisoformat(final["finished_at"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(final["retained_until"].replace("Z", "+00:00"))
    assert abs((until - finished).total_seconds() - 3600) < 1  # retained from its end
    bad = requests.post(f"{stack.url}/v1/edits", json={**body, "priority": "soon"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "priority"
    form = {"params": json.dumps({"prompt": "red"}), "cancel_after_s": "0"}
    bad = requests.post(f"{stack.url}/v1/edits", files={"image": ("e.png", sample_png(32, 32), "image/png")},
                        data=form, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cancel_after_s"


def test_an_edit_not_started_within_its_cancel_after_s_expires_without_running(stack, client, parent):
    busy = client.edit(parent["id"], 0, "make it teal", {"num_inference_steps": 200, "seed": 13}, cache=False)
    wait_running(client, busy["id"], min_step=1, timeout_s=300)
    # The one edit worker is busy: this edit cannot start within its second.
    form = {"params": json.dumps({"prompt": "make it pink", "num_inference_steps": 2}), "cancel_after_s": "1"}
    resp = requests.post(f"{stack.url}/v1/edits", files={"image": ("e.png", sample_png(48, 48), "image/png")},
                         data=form, timeout=30)
    assert resp.status_code == 202 and resp.json()["deadline_at"] is not None, resp.text
    ended = client.wait(resp.json()["id"], timeout_s=120)
    requests.post(f"{stack.url}/v1/jobs/{busy['id']}/cancel", timeout=30)
    assert ended["status"] == "expired" and ended["error"]["code"] == "expired"
    assert ended["started_at"] is None and ended["attempts"] == 0
    log = transition_log(stack, ended["id"])
    assert len(log) == 1 and log[0].startswith("queued>expired@"), log
    assert client.wait(busy["id"], timeout_s=120)["status"] == "canceled"


def test_sigkilled_edit_worker_mid_job_finishes_exactly_once(stack, client, parent):
    job = client.edit(parent["id"], 2, "add a star", {"num_inference_steps": 4, "seed": 11})
    wait_running(client, job["id"], min_step=1, timeout_s=300)
    stack.replace_edit_worker(0, signal.SIGKILL)
    final = client.wait(job["id"], timeout_s=400)
    assert final["status"] == "succeeded", final.get("error")
    assert final["attempts"] == 2  # the killed delivery and the one that finished
    assert len(terminal_transitions(stack, job["id"])) == 1, transition_log(stack, job["id"])
    wait_for(lambda: len(job_objects(stack, job["id"])) >= 3 + 1 + 1 + 4, 10, what="every object")


def test_edit_batch_one_instruction_over_many_layers_with_a_dry_run(stack, client, parent):
    body = {"kind": "edit", "defaults": {"prompt": "make it gold", "num_inference_steps": 2, "matte": "keep"},
            "items": [{"source": {"job_id": parent["id"], "layer": 0}},
                      {"source": {"job_id": parent["id"], "layer": 2}, "params": {"prompt": "make it silver"}}]}
    estimate = requests.post(f"{stack.url}/v1/batches", json={**body, "dry_run": True}, timeout=30)
    assert estimate.status_code == 200 and estimate.json()["estimated_gpu_s"] > 0, estimate.text
    bad = {**body, "items": [*body["items"], {"source": {"job_id": parent["id"], "layer": 9}}]}
    resp = requests.post(f"{stack.url}/v1/batches", json=bad, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "items.2.source.layer"
    resp = requests.post(f"{stack.url}/v1/batches", json=body, timeout=30)
    assert resp.status_code == 202, resp.text
    finals = [client.wait(j, timeout_s=400) for j in resp.json()["job_ids"]]
    assert [f["status"] for f in finals] == ["succeeded"] * 2, [f.get("error") for f in finals]
    assert [f["params"]["prompt"] for f in finals] == ["make it gold", "make it silver"]
    assert [f["params"]["source"]["layer"] for f in finals] == [0, 2]
    batch = requests.get(f"{stack.url}/v1/batches/{resp.json()['id']}", timeout=30).json()
    assert batch["counts"]["succeeded"] == 2
