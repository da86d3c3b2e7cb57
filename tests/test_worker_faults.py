"""A job whose pipeline call raises ends `failed` with a readable message, and the same worker
process goes on to run the next job. Real worker process, real pipeline, real Redis.

The API refuses inputs the pipeline cannot take, so the failing job is put on the queue the way a
stale or hand-made message would arrive: record + stored input + task sent by name."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from layerq import keys
from layerq.celery_app import make_celery
from layerq.client import LayerqClient
from layerq.messages import DECOMPOSE_QUEUE, DECOMPOSE_TASK, DecomposeMessage
from layerq.params import DecomposeParams
from layerq.sample import sample_png
from storage.factory import open_object_store
from storage.jobs import JobStore, new_job_id

pytestmark = pytest.mark.e2e


def enqueue_directly(stack, image: Image.Image, params: DecomposeParams) -> str:
    settings = stack.settings
    job_id = new_job_id()
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    open_object_store(settings).put(keys.input_key(job_id), buf.getvalue(), "image/png")
    jobs = JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    jobs.create(job_id, kind="decompose", queue=DECOMPOSE_QUEUE, params=params.model_dump(),
                input_key=keys.input_key(job_id))
    msg = DecomposeMessage(job_id=job_id, input_key=keys.input_key(job_id), params=params)
    make_celery(settings).send_task(DECOMPOSE_TASK, args=[msg.model_dump(mode="json")], queue=DECOMPOSE_QUEUE)
    return job_id


def test_pipeline_error_fails_the_job_and_the_worker_keeps_serving(local_stack):
    client = LayerqClient(local_stack.url)
    worker = local_stack.workers[0]
    # A 2000:1 strip: the pipeline's own size computation rounds the height to 0 and it raises.
    bad = enqueue_directly(local_stack, Image.new("RGBA", (2000, 1), (255, 0, 0, 255)),
                           DecomposeParams(num_inference_steps=2, prompt="x", seed=1))
    failed = client.wait(bad, timeout_s=120)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "pipeline_error" and "height and width" in failed["error"]["message"]
    assert failed["result"] is None

    ok = client.submit(sample_png(256, 256), {"layers": 2, "num_inference_steps": 2, "prompt": "x"})
    assert client.wait(ok["id"], timeout_s=120)["status"] == "succeeded"
    assert worker.poll() is None  # the very same worker process served both


def test_malformed_message_fails_its_job_not_the_worker(local_stack):
    client = LayerqClient(local_stack.url)
    settings = local_stack.settings
    job_id = new_job_id()
    jobs = JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    jobs.create(job_id, kind="decompose", queue=DECOMPOSE_QUEUE, params={}, input_key=keys.input_key(job_id))
    make_celery(settings).send_task(
        DECOMPOSE_TASK, args=[{"job_id": job_id, "input_key": "x", "params": {"layers": 99}}], queue=DECOMPOSE_QUEUE
    )
    failed = client.wait(job_id, timeout_s=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request"
    assert "layers" in failed["error"]["message"]
    assert local_stack.workers[0].poll() is None


def test_missing_input_fails_with_a_clear_code(local_stack):
    client = LayerqClient(local_stack.url)
    settings = local_stack.settings
    job_id = new_job_id()
    params = DecomposeParams(num_inference_steps=2, prompt="x", seed=1)
    jobs = JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    jobs.create(job_id, kind="decompose", queue=DECOMPOSE_QUEUE, params=params.model_dump(),
                input_key=keys.input_key(job_id))
    msg = DecomposeMessage(job_id=job_id, input_key=keys.input_key(job_id), params=params)
    make_celery(settings).send_task(DECOMPOSE_TASK, args=[msg.model_dump(mode="json")], queue=DECOMPOSE_QUEUE)
    failed = client.wait(job_id, timeout_s=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_request"
    assert "missing" in failed["error"]["message"]
