"""`api.submission.enqueue`, the one send path of every job kind (decompose, edit, compose, combine):
with the broker unreachable each job ends `failed` with `enqueue_failed`, keeps no queue position and
no unsent entry, and the caller gets a 503 (`QueueUnavailable`). Real Redis for the records; the
broker is a closed port."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from api.submission import enqueue
from layerq.celery_app import make_celery
from layerq.config import Settings
from layerq.errors import QueueUnavailable
from layerq.layer_ops import CombineParams, ComposeParams
from layerq.layersets import CombineMessage, ComposeMessage
from storage.jobs import NewJob, new_job_id
from storage.services import Services


def a_job(kind: str) -> NewJob:
    job_id = new_job_id()
    if kind == "compose":
        params = ComposeParams.from_request({"ops": [{"op": "hide", "index": 0}]})
        message = ComposeMessage(job_id=job_id, parent_id="p", layer_keys=["jobs/p/layers/00.png"], params=params)
        return NewJob(job_id, params.model_dump(mode="json"), "", kind="compose", queue="cpu",
                      message=message.model_dump(mode="json"))
    if kind == "combine":
        params = CombineParams()
        message = CombineMessage(job_id=job_id, input_keys=["uploads/u/a.png"], params=params)
        return NewJob(job_id, params.model_dump(mode="json"), "uploads/u/a.png", kind="combine", queue="cpu",
                      message=message.model_dump(mode="json"))
    if kind == "edit":
        return NewJob(job_id, {"prompt": "make it red", "seed": 1}, "uploads/u/a.png", kind="edit", queue="edit")
    return NewJob(job_id, {"layers": 2, "seed": 1}, "uploads/u/a.png")


@pytest.mark.parametrize("kind", ["decompose", "edit", "compose", "combine"])
def test_an_unreachable_broker_fails_every_kind_cleanly(redis_url, tmp_path, kind):
    settings = Settings.from_env(environ={}, redis_url=redis_url, key_prefix=f"enq{uuid.uuid4().hex[:8]}",
                                 storage_dir=str(tmp_path), signing_secret="s")
    svc = Services.open(settings)
    # The records' Redis is up; the broker is a port nobody listens on.
    svc = dataclasses.replace(svc, celery=make_celery(settings.replace(redis_url="redis://127.0.0.1:9/0")))
    job = a_job(kind)
    svc.jobs.create_many([job])
    with pytest.raises(QueueUnavailable):
        enqueue(svc, [job])
    rec = svc.jobs.get(job.job_id)
    assert (rec["status"], rec["error"]["code"]) == ("failed", "enqueue_failed")
    assert svc.jobs.queued_count(job.queue) == 0
    assert svc.jobs.unsent_since(0, job.queue) == []
