"""Job endpoints: submit (multipart image, or JSON naming an uploaded input), read, list, cancel."""

from __future__ import annotations

import hashlib

from flask import Blueprint, jsonify, request, url_for
from pydantic import ValidationError

from api.app import services
from api.errors import validation_failed
from api.form import form_flag
from api.idempotency import idempotent
from api.ids import check_id
from api.paging import page_query
from api.submission import cache_key, cached_source, check_webhook, enqueue, parse_json_field, parse_params
from api.tenancy import tenant
from api.views import job_view
from layerq import keys
from layerq.errors import JobNotFound, ValidationFailed
from layerq.images import normalise_image, png_bytes
from layerq.jobs import JobStatus
from layerq.requests import JobRequest
from layerq.webhooks import WebhookSpec, notify
from storage.jobs import NewJob, new_job_id

bp = Blueprint("jobs", __name__)

FORM_FIELDS = {"image", "params", "webhook", "cache"}


@bp.post("/v1/jobs")
@idempotent
def submit_job():
    """Multipart: `image` (file), `params` (JSON object), optional `webhook` (JSON) and `cache`
    ("false" opts out of the result cache). Or JSON: `JobRequest` naming an uploaded input."""
    svc = services()
    who = tenant()
    if request.mimetype == "application/json":
        body = _json_request()
        params, input_key, digest, image = body.params.with_seed(), body.input_key, "", None
        webhook, use_cache = check_webhook(body.webhook, svc.settings), False  # bytes unread: no cache key
        job_id = new_job_id()
    elif request.mimetype.startswith("multipart/form-data"):
        unknown = sorted((set(request.files) | set(request.form)) - FORM_FIELDS)
        if unknown:
            raise ValidationFailed(f"unknown form field {unknown[0]!r}", field=unknown[0])
        params = parse_params(parse_json_field(request.form.get("params"), "params")).with_seed()
        webhook = check_webhook(_webhook_field(request.form.get("webhook")), svc.settings)
        use_cache = form_flag(request.form.get("cache"), "cache", default=True)
        upload = request.files.get("image")
        if upload is None:
            raise ValidationFailed("an `image` file is required", field="image")
        data = upload.read()
        image = normalise_image(data, max_pixels=svc.settings.max_image_pixels, max_side_px=svc.settings.max_image_side_px)
        digest = hashlib.sha256(data).hexdigest()
        job_id = new_job_id()
        input_key = keys.input_key(job_id)
    else:
        raise ValidationFailed("send multipart/form-data with an `image` file, or JSON with an `input_key`",
                               field="image")
    use_cache = use_cache and "no-cache" not in request.headers.get("Cache-Control", "")

    ckey = cache_key(svc.settings.key_prefix, who, digest, params, svc.settings.model) if digest else ""
    source = cached_source(svc, ckey, who) if ckey and use_cache else None
    if source is not None:
        svc.jobs.create_cached(job_id, params=params.model_dump(), source=source, tenant=who)
    else:
        if image is not None:  # multipart: store the normalised input (uploads are already stored)
            svc.store.put(input_key, png_bytes(image), "image/png")
        job = NewJob(job_id=job_id, params=params.model_dump(), input_key=input_key, tenant=who,
                     cache_key=ckey, webhook=webhook)
        svc.jobs.create_many([job])
        enqueue(svc, [job])
    resp = jsonify(_view(svc.jobs.get(job_id)))
    resp.status_code = 202 if source is None else 200
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return resp


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str):
    return jsonify(_view(_owned(job_id)))


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    """Queued → canceled at once; running → canceling (stops at the next denoising step). Cancelling
    a finished or already-canceled job changes nothing and says so."""
    svc = services()
    before = _owned(job_id)["status"]
    outcome = svc.jobs.cancel([job_id])
    rec = svc.jobs.get(job_id)
    if outcome["canceled"]:  # no worker will ever see this job: the API sends its webhook
        notify(svc.celery, svc.settings, rec, redis_client=svc.jobs.r)
    view = _view(rec)
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
    """`?batch=<id>&status=<s>&cursor=<n>&limit=<n>`: a batch's jobs in submission order."""
    from api.batches import page_of_jobs

    batch_id = request.args.get("batch")
    if batch_id is None:
        raise ValidationFailed("listing needs a batch (?batch=<id>)", field="batch")
    check_id(batch_id, field="batch", what="batch")
    page_query(request.args)  # a malformed query is a 400 even for a batch that is not there
    return jsonify(page_of_jobs(batch_id))


def _owned(job_id: str) -> dict:
    svc = services()
    check_id(job_id, field="id")
    rec = svc.jobs.get(job_id)
    if rec.get("tenant", "") not in ("", tenant()):
        raise JobNotFound(f"no job with id {job_id!r}", field="id")  # not yours: indistinguishable from absent
    return rec


def _view(rec: dict) -> dict:
    svc = services()
    return job_view(rec, svc.jobs, svc.store, svc.settings.url_ttl_s, svc.stats)


def _json_request() -> JobRequest:
    try:
        return JobRequest.model_validate(request.get_json(force=True, silent=False))
    except ValidationError as exc:
        raise validation_failed(exc) from exc
    except Exception as exc:  # malformed JSON
        raise ValidationFailed(f"body is not valid JSON: {exc}", field="body") from exc


def _webhook_field(raw: str | None) -> WebhookSpec | None:
    if raw is None:
        return None
    try:
        return WebhookSpec.model_validate(parse_json_field(raw, "webhook"))
    except ValidationError as exc:
        raise validation_failed(exc, prefix="webhook") from exc

