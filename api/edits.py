"""`POST /v1/edits`: an edit job on a layer of a finished job, or on an uploaded image.

A route of its own rather than `kind: "edit"` on `POST /v1/jobs` (docs/decisions.md, "Edit jobs"):
the body's shape differs (a source layer, an instruction that is required), and keeping
`POST /v1/jobs` as it is keeps its contract and every client of it unchanged. The job it creates is
an ordinary job: read, cancel, list and webhook it like any other."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request

from api.bodies import json_body, json_field, parse_model
from api.context import owned_job, services
from api.form import form_flag, form_seconds
from api.idempotency import idempotent
from api.answers import answer_one
from api.submission import Item, check_webhook
from layerq.edits import KIND, EditJobParams, EditParams, EditRequest, EditSource
from layerq.errors import JobNotFound, ValidationFailed
from layerq.images import normalise_image
from layerq.queues import EDIT_QUEUE
from layerq.results import with_object_keys
from layerq.scheduling import schedule, schedule_from_form
from layerq.webhooks import WebhookSpec
from storage.services import Services

bp = Blueprint("edits", __name__)

FORM_FIELDS = {"image", "params", "webhook", "cache", "priority", "cancel_after_s", "retain_s"}


@bp.post("/v1/edits")
@idempotent
def submit_edit():
    """JSON `EditRequest` (a `source` layer or an `input_key`), or multipart: `image` (file),
    `params` (JSON `EditParams`), optional `webhook`, `cache`, `priority`,
    `cancel_after_s` and `retain_s`. Answers 202 with the job (200 when
    answered from the result cache)."""
    svc = services()
    if request.mimetype == "application/json":
        body = json_body(EditRequest)
        if (body.source is None) == (body.input_key is None):
            raise ValidationFailed("give exactly one of `source` (a layer of a finished job) or `input_key`",
                                   field="source")
        params = _checked(body.params, svc)
        webhook, use_cache = check_webhook(body.webhook, svc), body.cache
        sched = schedule(body.priority, body.cancel_after_s, default_priority="interactive")
        retain_s = body.retain_s
        if body.source is not None:
            item = source_item(svc, body.source, params, "source")
        else:
            item = Item(params=EditJobParams(**params.model_dump()), field="input_key", input_key=body.input_key,
                        kind=KIND, queue=EDIT_QUEUE)
    elif request.mimetype.startswith("multipart/form-data"):
        unknown = sorted((set(request.files) | set(request.form)) - FORM_FIELDS)
        if unknown:
            raise ValidationFailed(f"unknown form field {unknown[0]!r}", field=unknown[0])
        raw = json_field(request.form.get("params"), "params")
        if not isinstance(raw, dict):
            raise ValidationFailed("params must be a JSON object", field="params")
        params = _checked(parse_model(EditParams, raw, prefix="params"), svc)
        raw_hook = request.form.get("webhook")
        spec = None if raw_hook is None else parse_model(WebhookSpec, json_field(raw_hook, "webhook"), prefix="webhook")
        webhook = check_webhook(spec, svc)
        use_cache = form_flag(request.form.get("cache"), "cache", default=True)
        sched = schedule_from_form(request.form, default_priority="interactive")
        retain_s = form_seconds(request.form.get("retain_s"), "retain_s")
        upload = request.files.get("image")
        if upload is None:
            raise ValidationFailed("an `image` file is required", field="image")
        data = upload.read()
        image = normalise_image(data, max_pixels=svc.settings.max_image_pixels,
                                max_side_px=svc.settings.max_image_side_px)
        item = Item(params=EditJobParams(**params.model_dump()), field="image", data=data, image=image,
                    kind=KIND, queue=EDIT_QUEUE, model=svc.settings.edit_model)
    else:
        raise ValidationFailed("send JSON with a `source` or an `input_key`, or multipart/form-data with an `image`",
                               field="body")
    return answer_one(svc, item, webhook=webhook, use_cache=use_cache, schedule=sched, retain_s=retain_s)


def _checked(params: EditParams, svc: Services) -> EditParams:
    if params.matte == "model" and not svc.settings.matte_model:
        raise ValidationFailed("the `model` matte is not configured on this server (no LAYERQ_MATTE_MODEL); "
                               "use `chroma` or `keep`", field="params.matte")
    return params.with_seed()


def source_item(svc: Services, source: EditSource, params: EditParams, field: str) -> Item:
    """The item editing layer `source.layer` of the caller's finished job `source.job_id`: a foreign or
    unknown job is 404, an unfinished one 400, a layer out of range 400, each naming its field."""
    try:
        rec = owned_job(source.job_id)
    except (JobNotFound, ValidationFailed):
        raise JobNotFound(f"no job with id {source.job_id!r}", field=f"{field}.job_id") from None
    if rec["status"] != "succeeded" or not rec.get("result"):
        raise ValidationFailed(f"job {source.job_id} is {rec['status']}: only a succeeded job's layers can be edited",
                               field=f"{field}.job_id")
    result: dict[str, Any] = with_object_keys(rec["result"], rec["id"])
    layers = result.get("layers") or []
    if not 0 <= source.layer < len(layers):
        raise ValidationFailed(f"job {source.job_id} has {len(layers)} layers (0 to {len(layers) - 1})",
                               field=f"{field}.layer")
    job_params = EditJobParams(**params.model_dump(), source=source)
    # The source's layers never change once its job succeeded: (job, layer) stands for their bytes.
    digest = f"job:{rec.get('cached_from') or rec['id']}:{source.layer}"
    return Item(params=job_params, field=field, kind=KIND, queue=EDIT_QUEUE, source_key=layers[source.layer]["key"],
                source_digest=digest, model=svc.settings.edit_model,
                parent=(source.job_id, source.layer, rec.get("cached_from") or rec["id"]))
