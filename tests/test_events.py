"""Streaming status (issue 11.8): Server-Sent Events of a job and of a batch through the shared
local stack (open mode), and `layerq submit --wait` following them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

PARAMS = {"layers": 2, "num_inference_steps": 4}


def test_a_job_stream_reports_its_progress_then_the_final_job_and_closes(local_stack):
    client = LayerqClient(local_stack.url)
    job = client.submit(sample_png(96, 64), PARAMS, cache=False)
    events = list(client.events(f"/v1/jobs/{job['id']}/events"))
    names = [name for name, _ in events]
    assert names[-1] == "done" and names.count("done") == 1 and "progress" in names, names
    progress = [data for name, data in events if name == "progress"]
    assert set(progress[0]) == {"id", "status", "stage", "step", "total", "queue_position", "eta_s"}
    assert progress[-1]["status"] == "succeeded"
    # Statuses only move forwards, and steps never go back within the run.
    order = ["queued", "running", "succeeded"]
    seen = [order.index(p["status"]) for p in progress]
    assert seen == sorted(seen)
    steps = [p["step"] for p in progress if p["status"] == "running"]
    assert steps == sorted(steps)
    final = events[-1][1]
    assert final["id"] == job["id"] and final["status"] == "succeeded" and final["result"]["layers"]


def test_a_finished_job_streams_done_at_once_and_an_unknown_one_is_404(local_stack):
    client = LayerqClient(local_stack.url)
    job = client.wait(client.submit(sample_png(80, 64), PARAMS, cache=False)["id"], timeout_s=300)
    events = list(client.events(f"/v1/jobs/{job['id']}/events"))
    assert [name for name, _ in events] == ["progress", "done"]
    bad = requests.get(f"{local_stack.url}/v1/jobs/{job['id']}/events?max_s=0", timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "max_s"
    missing = requests.get(f"{local_stack.url}/v1/jobs/{'f' * 32}/events", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
    other_tenant = requests.get(f"{local_stack.url}/v1/jobs/{job['id']}/events",
                                headers={"Authorization": "Bearer someone-else"}, timeout=10)
    assert other_tenant.status_code == 404


def test_a_batch_stream_counts_until_every_job_ended(local_stack):
    images = {f"f{i}": (f"{i}.png", sample_png(64 + 16 * i, 64), "image/png") for i in range(2)}
    batch = {"defaults": PARAMS, "items": [{"file": name} for name in images], "cache": False}
    resp = requests.post(local_stack.url + "/v1/batches", files=images, data={"batch": json.dumps(batch)}, timeout=30)
    assert resp.status_code == 202, resp.text
    client = LayerqClient(local_stack.url)
    events = list(client.events(f"/v1/batches/{resp.json()['id']}/events"))
    assert events[-1][0] == "done"
    final = events[-1][1]
    assert final["counts"]["succeeded"] == 2 and final["progress"] == 1.0


def test_layerq_submit_wait_follows_the_stream(local_stack, tmp_path):
    image = tmp_path / "poster.png"
    image.write_bytes(sample_png(72, 64))
    env = {**os.environ, "LAYERQ_API_URL": local_stack.url}
    done = subprocess.run([sys.executable, "-m", "layerq.cli", "submit", str(image), "--layers", "2", "--steps", "3",
                           "--wait", "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "layers and exports in" in done.stdout
    assert (tmp_path / "out" / "poster" / "composite.png").exists()
    assert "jobs 1/1" in done.stderr  # the progress bar, driven by the stream
