"""Layer-set job routes: decompose a layer of a finished set again, compose (operations on a finished
set) and combine (uploaded layers stacked). Kind-specific parsing lives here; jobs are created with
the shared stores (`JobStore.create_many`, plus the parent link in `Lineage`) and sent by the shared
`send`: recursive decompositions go through fair admission like any decompose job (`interactive`);
compose and combine jobs go straight to the `cpu` queue through `enqueue` (short CPU work on a thread
pool, never behind a GPU, so no fair admission, priorities or deadlines: docs/decisions.md, "Fair
admission and the cpu queue"). Either way every kind fails the same way when the broker is unreachable
and is re-sent by the workers' unsent-jobs sweep when the API dies before sending.

A source is a succeeded job of the caller: another tenant's or an unknown one is 404 naming
`source.job_id`; one not finished yet is 409; a failed or canceled one (no layer set) is 400."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request, url_for

from api.bodies import json_field, json_object, parse_model
from api.form import form_seconds
from api.context import services
from api.durability import ensure_replicated
from api.idempotency import idempotent
from api.routing import decompose_queue_for
from api.submission import check_uploads, check_webhook, send, Item
from api.tenancy import tenant
from api.views import job_view
from layerq import objects
from layerq.errors import IllegalTransition, JobNotFound, ValidationFailed
from layerq.images import normalise_image, png_bytes
from layerq.jobs import JobStatus
from layerq.layer_ops import CombineParams, ComposeParams, check_ops
from layerq.layersets import (
    MAX_COMBINE_LAYERS, CombineMessage, CombineRequest, ComposeMessage, ComposeRequest, LayerDecomposeRequest,
)
from layerq.queues import LAYERSET_QUEUE
from layerq.results import with_object_keys
from layerq.scheduling import schedule
from layerq.webhooks import WebhookSpec
from storage.jobs import NewJob, new_job_id
from storage.services import Services

bp = Blueprint("layersets", __name__)

COMBINE_FORM_FIELDS = {"layers", "params", "webhook", "retain_s"}


class SourceNotFinished(IllegalTransition):
    """The source job has not finished yet (409): try again once it has."""

    code = "not_finished"


def source_layers(svc: Services, job_id: str) -> tuple[list[dict[str, Any]], str]:
    """The caller's finished job's layers as its result names them ({index, key, width, height}),
    and the job that owns their objects (the source of a cached job, else the job itself)."""
    try:
        rec = svc.jobs.get(job_id)
    except JobNotFound:
        rec = None
    if rec is None or rec.get("tenant", "") not in ("", tenant()):
        raise JobNotFound(f"no job with id {job_id!r}", field="source.job_id")
    status = JobStatus(rec["status"])
    if not status.is_terminal():
        raise SourceNotFinished(f"job {job_id} is {status.value}; its layer set is not ready yet",
                                field="source.job_id")
    layers = (with_object_keys(rec.get("result") or {}, job_id).get("layers") or []) \
        if status is JobStatus.SUCCEEDED else []
    if not layers:
        raise ValidationFailed(f"job {job_id} is {status.value} and has no layer set", field="source.job_id")
    return layers, rec.get("cached_from") or job_id


def _accept(svc: Services, job: NewJob, parent: tuple[str, int | None] | None, owner: str = ""):
    """Write the job (and its parent link) in one round trip, answer it as accepted, then send it;
    with durable submissions on, answer only once the replicas hold both (else 503, job canceled)."""
    pipe = svc.jobs.pipeline()
    svc.jobs.create_many([job], pipe=pipe)
    if parent is not None:
        svc.lineage.link(job.job_id, parent[0], parent[1], pipe=pipe, owner_id=owner)
    pipe.execute()
    view = job_view(svc.jobs.get(job.job_id), svc)
    send(svc, [job])
    # Durable submissions (`LAYERQ_REDIS_WAIT_REPLICAS`) cover layer-set jobs as they do the others.
    ensure_replicated(svc, [job], [])
    resp = jsonify(view)
    resp.status_code = 202
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job.job_id)
    return resp


@bp.post("/v1/layersets/decompose")
@idempotent
def decompose_layer():
    """A `decompose` job whose input is layer `source.layer` of a finished set."""
    svc = services()
    body = parse_model(LayerDecomposeRequest, json_object())
    layers, owner = source_layers(svc, body.source.job_id)
    if body.source.layer >= len(layers):
        raise ValidationFailed(f"layer {body.source.layer} does not exist; job {body.source.job_id} has "
                               f"{len(layers)} layers", field="source.layer")
    webhook = check_webhook(body.webhook, svc)
    sched = schedule(body.priority, body.cancel_after_s, default_priority="interactive")
    params = body.params.with_seed()
    job = NewJob(new_job_id(), params.model_dump(), layers[body.source.layer]["key"],
                 tenant=tenant(), webhook=webhook, queue=decompose_queue_for(params, svc.settings),
                 retain_s=_retain(svc, body.retain_s), **sched.job_fields())
    return _accept(svc, job, (body.source.job_id, body.source.layer), owner)


@bp.post("/v1/layersets/compose")
@idempotent
def compose_layers():
    """A `compose` job: the source set after `params.ops`, as a new layer set."""
    svc = services()
    raw = json_object()
    # The ops first, by hand: pydantic would name a bad field `params.ops.0.move.dx`.
    params = ComposeParams.from_request(raw.get("params", {}))
    body = parse_model(ComposeRequest, raw)
    layers, owner = source_layers(svc, body.source.job_id)
    check_ops(params.ops, len(layers), layers[0]["width"], layers[0]["height"])
    webhook = check_webhook(body.webhook, svc)
    job_id = new_job_id()
    message = ComposeMessage(job_id=job_id, parent_id=body.source.job_id,
                             layer_keys=[layer["key"] for layer in layers], params=params)
    job = NewJob(job_id, params.model_dump(mode="json"), "", kind="compose", queue=LAYERSET_QUEUE,
                 tenant=tenant(), webhook=webhook, retain_s=_retain(svc, body.retain_s),
                 message=message.model_dump(mode="json"))
    return _accept(svc, job, (body.source.job_id, None), owner)


@bp.post("/v1/layersets/combine")
@idempotent
def combine_layers():
    """A `combine` job: RGBA layers, bottom first, as one layer set. JSON: `input_keys` (uploads);
    multipart: `layers` file parts in order, `params` and `webhook` as JSON fields."""
    svc = services()
    job_id = new_job_id()
    if request.mimetype.startswith("multipart/form-data"):
        unknown = sorted((set(request.files) | set(request.form)) - COMBINE_FORM_FIELDS)
        if unknown:
            raise ValidationFailed(f"unknown form field {unknown[0]!r}", field=unknown[0])
        params = parse_model(CombineParams, json_field(request.form.get("params"), "params"), prefix="params")
        hook = request.form.get("webhook")
        spec = None if hook is None else parse_model(WebhookSpec, json_field(hook, "webhook"), prefix="webhook")
        webhook = check_webhook(spec, svc)
        retain_s = form_seconds(request.form.get("retain_s"), "retain_s")
        files = request.files.getlist("layers")
        if not files:
            raise ValidationFailed("at least one `layers` file is required", field="layers")
        if len(files) > MAX_COMBINE_LAYERS:
            raise ValidationFailed(f"at most {MAX_COMBINE_LAYERS} layers", field="layers")
        _check_placements(params, len(files))
        images = [normalise_image(f.read(), max_pixels=svc.settings.max_image_pixels,
                                  max_side_px=svc.settings.max_image_side_px, field=f"layers.{i}")
                  for i, f in enumerate(files)]
        keys = [objects.layer_input_key(job_id, i) for i in range(len(images))]
        for key, image in zip(keys, images):
            svc.store.put(key, png_bytes(image), "image/png")
    else:
        body = parse_model(CombineRequest, json_object())
        params, keys, retain_s = body.params, body.input_keys, body.retain_s
        webhook = check_webhook(body.webhook, svc)
        uploads = [Item(params=None, field=f"input_keys.{i}", input_key=key)  # type: ignore[arg-type]
                   for i, key in enumerate(keys)]
        check_uploads(svc, tenant(), uploads)  # another tenant's upload reads as absent: 404
    _check_placements(params, len(keys))
    message = CombineMessage(job_id=job_id, input_keys=keys, params=params)
    job = NewJob(job_id, params.model_dump(mode="json"), keys[0], kind="combine", queue=LAYERSET_QUEUE,
                 tenant=tenant(), webhook=webhook, retain_s=_retain(svc, retain_s),
                 message=message.model_dump(mode="json"))
    return _accept(svc, job, None)


def _retain(svc: Services, retain_s: int | None) -> int:
    """The job's `retain_s`, clamped to the server's longest, as every submission does."""
    return min(retain_s or svc.settings.job_ttl_s, svc.settings.retain_max_s)


def _check_placements(params: CombineParams, count: int) -> None:
    if len(params.placements) > count:
        raise ValidationFailed(f"{len(params.placements)} placements for {count} layers",
                               field=f"params.placements.{count}")
