"""Job endpoints: submit a decomposition, read a job."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, jsonify, request, url_for
from pydantic import ValidationError

from api.app import services
from api.errors import validation_failed
from api.images import normalise_image, png_bytes
from api.views import job_view
from layerq import keys
from layerq.errors import LayerqError, QueueUnavailable, ValidationFailed
from layerq.messages import DECOMPOSE_QUEUE, DECOMPOSE_TASK, DecomposeMessage
from layerq.params import DecomposeParams
from storage.jobs import new_job_id

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

FORM_FIELDS = {"image", "params"}


@bp.post("/v1/jobs")
def submit_job():
    """Multipart: `image` (file) and `params` (JSON object, optional). Everything is validated
    before anything is stored or enqueued."""
    svc = services()
    if not request.mimetype.startswith("multipart/form-data"):
        raise ValidationFailed("send multipart/form-data with an `image` file and a `params` JSON field", field="image")
    unknown = (set(request.files) | set(request.form)) - FORM_FIELDS
    if unknown:
        raise ValidationFailed(f"unknown form field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    params = parse_params(request.form.get("params"))
    upload = request.files.get("image")
    if upload is None:
        raise ValidationFailed("an `image` file is required", field="image")
    image = normalise_image(
        upload.read(), max_pixels=svc.settings.max_image_pixels, max_side_px=svc.settings.max_image_side_px
    )

    job_id = new_job_id()
    params = params.with_seed()
    svc.store.put(keys.input_key(job_id), png_bytes(image), "image/png")
    svc.jobs.create(
        job_id, kind="decompose", queue=DECOMPOSE_QUEUE, params=params.model_dump(), input_key=keys.input_key(job_id)
    )
    message = DecomposeMessage(job_id=job_id, input_key=keys.input_key(job_id), params=params)
    try:
        svc.celery.send_task(DECOMPOSE_TASK, args=[message.model_dump(mode="json")], queue=DECOMPOSE_QUEUE)
    except Exception as exc:  # broker down: the job must not sit queued forever
        log.exception("enqueue failed for job %s", job_id)
        try:
            svc.jobs.fail(job_id, "enqueue_failed", f"could not enqueue the job: {exc}")
        except LayerqError:
            pass
        raise QueueUnavailable("the job queue is unavailable; try again") from exc

    rec = svc.jobs.get(job_id)
    body = job_view(rec, svc.jobs, svc.store, svc.settings.url_ttl_s)
    resp = jsonify(body)
    resp.status_code = 202
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return resp


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    svc = services()
    if not job_id.isalnum() or len(job_id) > 64:
        raise ValidationFailed("malformed job id", field="id")
    rec = svc.jobs.get(job_id)
    return jsonify(job_view(rec, svc.jobs, svc.store, svc.settings.url_ttl_s))


def parse_params(raw: str | None) -> DecomposeParams:
    if raw is None or raw.strip() == "":
        return DecomposeParams()
    try:
        data: Any = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"params is not valid JSON: {exc.msg}", field="params") from exc
    if not isinstance(data, dict):
        raise ValidationFailed("params must be a JSON object", field="params")
    try:
        return DecomposeParams.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, prefix="params") from exc
