"""Batches: up to 10,000 jobs in one request (uploaded inputs and/or multipart files), with shared
defaults and per-item overrides; counts, progress, ETA and a paged job list; cancel; dry run."""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, jsonify, request, url_for

from api.bodies import json_body, json_field, parse_model, parse_params
from api.context import owned_batch, services
from api.idempotency import idempotent
from api.paging import newest_first, page, page_query
from api.routing import decompose_queue_for
from api.submission import Item, check_webhook, submit
from api.tenancy import tenant
from api.views import iso
from layerq.errors import ValidationFailed
from layerq.images import normalise_image
from layerq.jobs import TERMINAL
from layerq.params import DecomposeParams
from layerq.queues import DECOMPOSE_QUEUES, EDIT_QUEUE
from layerq.requests import BatchRequest
from layerq.scheduling import schedule
from layerq.webhooks import notify

bp = Blueprint("batches", __name__)

RUNNING_SCAN_MAX = 10_000
"""Jobs of a batch read to weigh its running jobs' progress (a batch holds at most 10,000)."""


@bp.post("/v1/batches")
@idempotent
def submit_batch():
    """JSON `BatchRequest`, or multipart with a `batch` field (the same JSON) and file parts that
    items name in `file`. Answers 202 with the batch id and every job id, in item order."""
    svc = services()
    body = _batch_request()
    webhook = check_webhook(body.webhook, svc)
    if body.kind == "edit":
        from api.edit_batches import edit_items

        params, items = edit_items(svc, body, _item_file)
        if body.dry_run:
            return jsonify(_estimate(params, "edit"))
        return _accepted(svc, body, webhook, params, items)
    params = [_item_params(body, i) for i in range(len(body.items))]
    # Every item must fit a GPU memory class of the fleet (a dry run too: it estimates what would run).
    queues = [decompose_queue_for(p, svc.settings, f"items.{i}.params") for i, p in enumerate(params)]
    if body.dry_run:
        return jsonify(_estimate(params))

    # Every file is decoded and checked before anything is stored: a bad item rejects the whole
    # request and leaves nothing behind.
    items = []
    for i, (item, p, queue) in enumerate(zip(body.items, params, queues)):
        if item.file is not None:
            data, image = _item_file(item.file, i)
            items.append(Item(params=p, field=f"items.{i}.file", data=data, image=image, queue=queue))
        else:
            items.append(Item(params=p, field=f"items.{i}.input_key", input_key=item.input_key, queue=queue))
    return _accepted(svc, body, webhook, params, items)


def _accepted(svc, body: BatchRequest, webhook, params: list, items: list[Item]):
    batch_id = uuid.uuid4().hex
    meta = {"webhook": webhook, "params": params[0].model_dump(), "kind": body.kind}
    done = submit(svc, tenant(), items, webhook=webhook, use_cache=body.cache, batch_id=batch_id, batch_meta=meta,
                  schedule=schedule(body.priority, body.cancel_after_s, default_priority="bulk"),
                  retain_s=body.retain_s)
    resp = jsonify({"id": batch_id, "count": len(done.job_ids), "job_ids": done.job_ids, "cached": len(done.cached)})
    resp.status_code = 202
    resp.headers["Location"] = url_for("batches.get_batch", batch_id=batch_id)
    return resp


BATCH_STATES = ("active", "done")


@bp.get("/v1/batches")
def list_batches():
    """`?state=active|done&cursor=<n>&limit=<n>`: the caller's batches, newest first, each with its
    counts (read a batch for its ETA and jobs). Callers without an API key get an empty page, as
    for their jobs (`page_of_own_jobs`)."""
    svc = services()
    state = request.args.get("state")
    if state is not None and state not in BATCH_STATES:
        raise ValidationFailed(f"state must be one of {', '.join(BATCH_STATES)}", field="state")
    # `status` filters jobs (`GET /v1/jobs`); a batch has a state, not a status.
    query = page_query({k: v for k, v in request.args.items() if k != "status"},
                       svc.settings.page_size, svc.settings.page_size_max)
    return jsonify(newest_first(query, lambda before, n: svc.batches.tenant_batch_ids(tenant(), before, n),
                                svc.batches.get_many, batch_summary,
                                keep=lambda b: state is None or (_finished(b) == b["count"]) == (state == "done")))


def batch_summary(batch: dict) -> dict:
    finished = _finished(batch)
    return {"id": batch["id"], "kind": batch["meta"].get("kind") or "decompose", "count": batch["count"],
            "counts": batch["counts"], "created_at": iso(batch["created_at"]),
            "progress": round(finished / batch["count"], 4), "done": finished == batch["count"]}


def _finished(batch: dict) -> int:
    return sum(batch["counts"][s.value] for s in TERMINAL)


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    svc = services()
    batch = owned_batch(batch_id)
    counts = batch["counts"]
    done = _finished(batch)
    partial = 0.0  # running jobs count by the share of their steps done
    if counts["running"]:
        for rec in svc.jobs.get_many(svc.batches.job_ids(batch_id)[:RUNNING_SCAN_MAX]):
            if rec and rec["status"] == "running":
                prog = rec.get("progress") or {}
                partial += (prog.get("step") or 0) / (prog.get("total") or 1)
    remaining = batch["count"] - done
    means = svc.stats.snapshot()
    kind = batch["meta"].get("kind") or "decompose"
    stats = svc.stats_of(kind)
    means = stats.snapshot() if kind != "decompose" else means
    per_job = stats.estimate_s(batch["meta"].get("params") or DecomposeParams().model_dump(), means)
    workers = max(1, svc.workers.live_count_on(_queues(kind)))
    eta = None if per_job is None or remaining == 0 else round((remaining - partial) * per_job / workers, 1)
    return jsonify({
        "id": batch_id, "count": batch["count"], "counts": counts, "created_at": iso(batch["created_at"]),
        "progress": round((done + partial) / batch["count"], 4), "eta_s": eta if remaining else 0.0,
        "jobs": page(batch_id),
    })


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    svc = services()
    batch = owned_batch(batch_id)
    ids = svc.batches.job_ids(batch_id)
    outcome = svc.jobs.cancel(ids, queues=_queues(batch["meta"].get("kind") or "decompose"))
    if outcome["canceled"] and batch["meta"].get("webhook"):
        # Jobs canceled while queued never reach a worker: their `canceled` webhooks go from here.
        for rec in svc.jobs.get_many(ids):
            if rec and rec["status"] == "canceled":
                notify(svc.celery, svc.settings, rec, deliveries=svc.deliveries)
    return jsonify({"id": batch_id, **outcome})


def _queues(kind: str) -> tuple[str, ...]:
    """The queues a batch's jobs wait in: `edit`, or the decompose queue of each memory class (items
    are routed one by one, so one batch may span several)."""
    return (EDIT_QUEUE,) if kind == "edit" else DECOMPOSE_QUEUES


def _estimate(params: list, kind: str = "decompose") -> dict:
    """Dry run: GPU-seconds of the batch and when it would finish behind the current queue (of its kind,
    from that kind's measured service times)."""
    svc = services()
    stats = svc.stats_of(kind)
    means = stats.snapshot()
    estimates = [stats.estimate_s(p.model_dump(), means) for p in params]
    if any(e is None for e in estimates):
        raise ValidationFailed(f"no measured service times yet: run a {kind} job first, then ask again",
                               field="dry_run")
    workers = max(1, svc.workers.live_count_on(_queues(kind)))
    gpu_s = sum(estimates)
    ahead = sum(svc.jobs.queued_count(q) for q in _queues(kind)) * (gpu_s / len(estimates))
    completion_s = (ahead + gpu_s) / workers
    return {"dry_run": True, "count": len(params), "estimated_gpu_s": round(gpu_s, 2),
            "queue_ahead_gpu_s": round(ahead, 2), "workers": workers,
            "estimated_completion_s": round(completion_s, 2), "estimated_completion_at": iso(time.time() + completion_s)}


def _batch_request() -> BatchRequest:
    if request.mimetype.startswith("multipart/form-data"):
        return parse_model(BatchRequest, json_field(request.form.get("batch"), "batch"))
    return json_body(BatchRequest)


def _item_params(body: BatchRequest, i: int) -> DecomposeParams:
    item = body.items[i]
    if item.source is not None:
        raise ValidationFailed('`source` is for edit batches (`kind: "edit"`)', field=f"items.{i}.source")
    if (item.input_key is None) == (item.file is None):
        raise ValidationFailed("each item needs exactly one of input_key or file", field=f"items.{i}")
    return parse_params({**body.defaults, **item.params}, field=f"items.{i}.params").with_seed()


def _item_file(name: str, i: int):
    svc = services()
    upload = request.files.get(name)
    if upload is None:
        raise ValidationFailed(f"no file part named {name!r} in this request", field=f"items.{i}.file")
    data = upload.read()
    upload.seek(0)
    image = normalise_image(data, max_pixels=svc.settings.max_image_pixels,
                            max_side_px=svc.settings.max_image_side_px, field=f"items.{i}.file")
    return data, image
