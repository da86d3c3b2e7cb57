"""Job endpoints: submit (multipart image, or JSON naming an uploaded input), read, list, cancel."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.bodies import json_body, json_field, parse_model, parse_params
from api.context import owned_job, services
from api.form import form_flag, form_seconds
from api.idempotency import idempotent
from api.paging import page_of_jobs, page_of_own_jobs
from api.routing import decompose_queue_for
from api.answers import answer_one
from api.submission import Item, check_webhook
from api.views import job_view
from layerq.errors import ValidationFailed
from layerq.images import normalise_image
from layerq.jobs import JobStatus
from layerq.requests import JobRequest
from layerq.scheduling import schedule, schedule_from_form
from layerq.webhooks import WebhookSpec, notify

bp = Blueprint("jobs", __name__)

FORM_FIELDS = {"image", "params", "webhook", "cache", "priority", "cancel_after_s", "retain_s"}


@bp.post("/v1/jobs")
@idempotent
def submit_job():
    """Multipart: `image` (file), `params` (JSON object), optional `webhook` (JSON) and `cache`
    ("false" opts out of the result cache). Or JSON: `JobRequest` naming an uploaded input."""
    svc = services()
    if request.mimetype == "application/json":
        body = json_body(JobRequest)
        params = body.params.with_seed()
        item = Item(params=params, field="input_key", input_key=body.input_key,
                    queue=decompose_queue_for(params, svc.settings))
        webhook, use_cache = check_webhook(body.webhook, svc), False  # bytes unread: no cache key
        sched = schedule(body.priority, body.cancel_after_s, default_priority="interactive")
        retain_s = body.retain_s
    elif request.mimetype.startswith("multipart/form-data"):
        unknown = sorted((set(request.files) | set(request.form)) - FORM_FIELDS)
        if unknown:
            raise ValidationFailed(f"unknown form field {unknown[0]!r}", field=unknown[0])
        params = parse_params(json_field(request.form.get("params"), "params")).with_seed()
        queue = decompose_queue_for(params, svc.settings)  # before the image is read: refused at once
        webhook = check_webhook(_webhook_field(request.form.get("webhook")), svc)
        use_cache = form_flag(request.form.get("cache"), "cache", default=True)
        sched = schedule_from_form(request.form, default_priority="interactive")
        retain_s = form_seconds(request.form.get("retain_s"), "retain_s")
        upload = request.files.get("image")
        if upload is None:
            raise ValidationFailed("an `image` file is required", field="image")
        data = upload.read()
        image = normalise_image(data, max_pixels=svc.settings.max_image_pixels,
                                max_side_px=svc.settings.max_image_side_px)
        item = Item(params=params, field="image", data=data, image=image, queue=queue)
    else:
        raise ValidationFailed("send multipart/form-data with an `image` file, or JSON with an `input_key`",
                               field="image")
    return answer_one(svc, item, webhook=webhook, use_cache=use_cache, schedule=sched, retain_s=retain_s)


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(job_view(owned_job(job_id), services()))


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Queued → canceled at once; running → canceling (stops at the next denoising step). Cancelling
    a finished or already-canceled job changes nothing and says so."""
    svc = services()
    rec = owned_job(job_id)
    before = rec["status"]
    outcome = svc.jobs.cancel([job_id], queue=rec.get("queue") or rec["kind"])
    rec = svc.jobs.get(job_id)
    if outcome["canceled"]:  # no worker will ever see this job: the API sends its webhook
        notify(svc.celery, svc.settings, rec, deliveries=svc.deliveries)
    view = job_view(rec, svc)
    if outcome["already_finished"]:
        message = f"job already {before}; nothing to cancel"
    elif before == JobStatus.CANCELING.value:
        message = "cancel already requested; the job stops at its next step"
    elif outcome["canceling"]:
        message = "the job is running and stops at its next denoising step"
    else:
        message = "the job was canceled before it started"
    return jsonify({"job": view, "message": message, "changed": bool(outcome["canceled"] or
                    (outcome["canceling"] and before != JobStatus.CANCELING.value))})


@bp.get("/v1/jobs")
def list_jobs():
    """`?batch=<id>&status=<s>&cursor=<n>&limit=<n>`: a batch's jobs in submission order. Without
    `batch`: the caller's own jobs outside batches, newest first (`page_of_own_jobs`)."""
    batch_id = request.args.get("batch")
    if batch_id is None:
        return jsonify(page_of_own_jobs())
    return jsonify(page_of_jobs(batch_id))  # checks the query and the id before the batch


def _webhook_field(raw: str | None) -> WebhookSpec | None:
    if raw is None:
        return None
    return parse_model(WebhookSpec, json_field(raw, "webhook"), prefix="webhook")
