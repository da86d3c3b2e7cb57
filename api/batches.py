"""Batches: up to 10,000 jobs in one request (uploaded inputs and/or multipart files), with shared
defaults and per-item overrides; counts, progress, ETA and a paged job list; cancel; dry run."""

from __future__ import annotations

import hashlib
import time
import uuid

from flask import Blueprint, jsonify, request, url_for
from pydantic import ValidationError

from api.app import services
from api.errors import validation_failed
from api.idempotency import idempotent
from api.ids import check_id
from api.paging import PAGE_MAX, page_query
from api.submission import cache_key, cached_source, check_webhook, enqueue, parse_json_field, parse_params
from api.tenancy import tenant
from api.views import iso, job_view
from layerq import keys
from layerq.errors import JobNotFound, ValidationFailed
from layerq.images import normalise_image, png_bytes
from layerq.params import DecomposeParams
from layerq.requests import BatchRequest
from layerq.webhooks import notify
from storage.batches import BatchStore
from storage.jobs import NewJob, new_job_id

bp = Blueprint("batches", __name__)


def batches() -> BatchStore:
    return BatchStore(services().jobs)


@bp.post("/v1/batches")
@idempotent
def submit_batch():
    """JSON `BatchRequest`, or multipart with a `batch` field (the same JSON) and file parts that
    items name in `file`. Answers 202 with the batch id and every job id, in item order."""
    svc = services()
    who = tenant()
    body = _batch_request()
    webhook = check_webhook(body.webhook, svc.settings)
    params = [_item_params(body, i) for i in range(len(body.items))]
    if body.dry_run:
        return jsonify(_estimate(params))

    # Every file is decoded and checked before anything is stored: a bad item rejects the whole
    # request and leaves nothing behind.
    files = {i: _item_file(item.file, i) for i, item in enumerate(body.items) if item.file is not None}
    batch_id = uuid.uuid4().hex
    ordered_ids: list[str] = []
    runnable: list[NewJob] = []
    cached: list[tuple[str, DecomposeParams, dict]] = []
    for i, (item, p) in enumerate(zip(body.items, params)):
        job_id = new_job_id()
        ordered_ids.append(job_id)
        if i in files:
            data, image = files[i]
            ckey = cache_key(svc.settings.key_prefix, who, hashlib.sha256(data).hexdigest(), p, svc.settings.model)
            source = cached_source(svc, ckey, who) if body.cache else None
            if source is not None:
                cached.append((job_id, p, source))
                continue
            svc.store.put(keys.input_key(job_id), png_bytes(image), "image/png")
            job = NewJob(job_id, p.model_dump(), keys.input_key(job_id), batch_id=batch_id, tenant=who,
                         cache_key=ckey, webhook=webhook)
        else:
            job = NewJob(job_id, p.model_dump(), item.input_key or "", batch_id=batch_id, tenant=who, webhook=webhook)
        runnable.append(job)
    meta = {"webhook": webhook, "params": params[0].model_dump()}
    batches().create(batch_id, runnable, tenant=who, meta=meta, all_ids=ordered_ids)
    pipe = svc.jobs.r.pipeline(transaction=False)
    for job_id, p, source in cached:
        svc.jobs.create_cached(job_id, params=p.model_dump(), source=source, tenant=who, batch_id=batch_id, pipe=pipe)
    pipe.execute()
    enqueue(svc, runnable)
    resp = jsonify({"id": batch_id, "count": len(ordered_ids), "job_ids": ordered_ids, "cached": len(cached)})
    resp.status_code = 202
    resp.headers["Location"] = url_for("batches.get_batch", batch_id=batch_id)
    return resp


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    svc = services()
    batch = _owned(batch_id)
    counts = batch["counts"]
    done = counts["succeeded"] + counts["failed"] + counts["canceled"]
    partial = 0.0  # running jobs count by the share of their steps done
    if counts["running"]:
        for rec in svc.jobs.get_many(batches().job_ids(batch_id)[: PAGE_MAX * 20]):
            if rec and rec["status"] == "running":
                prog = rec.get("progress") or {}
                partial += (prog.get("step") or 0) / (prog.get("total") or 1)
    remaining = batch["count"] - done
    means = svc.stats.snapshot()
    per_job = svc.stats.estimate_s(batch["meta"].get("params") or DecomposeParams().model_dump(), means)
    workers = max(1, svc.jobs.live_workers("decompose"))
    eta = None if per_job is None or remaining == 0 else round((remaining - partial) * per_job / workers, 1)
    return jsonify({
        "id": batch_id, "count": batch["count"], "counts": counts, "created_at": iso(batch["created_at"]),
        "progress": round((done + partial) / batch["count"], 4), "eta_s": eta if remaining else 0.0,
        "jobs": _page(batch_id),
    })


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    svc = services()
    batch = _owned(batch_id)
    ids = batches().job_ids(batch_id)
    outcome = svc.jobs.cancel(ids)
    if outcome["canceled"] and batch["meta"].get("webhook"):
        # Jobs canceled while queued never reach a worker: their `canceled` webhooks go from here.
        for rec in svc.jobs.get_many(ids):
            if rec and rec["status"] == "canceled":
                notify(svc.celery, svc.settings, rec, redis_client=svc.jobs.r)
    return jsonify({"id": batch_id, **outcome})


def page_of_jobs(batch_id: str) -> dict:
    """`?status=&cursor=&limit=` over a batch's jobs in submission order; `next_cursor` is null at the end."""
    _owned(batch_id)
    return _page(batch_id)


def _page(batch_id: str) -> dict:
    svc = services()
    query = page_query(request.args)
    status, cursor, limit = query.status, query.cursor, query.limit
    out, pos = [], cursor
    while len(out) < limit:
        ids = batches().job_ids(batch_id, pos, pos + limit * 2 - 1)
        if not ids:
            pos = None
            break
        for offset, rec in enumerate(svc.jobs.get_many(ids)):
            if rec and (status is None or rec["status"] == status):
                out.append(job_view(rec, svc.jobs, svc.store, svc.settings.url_ttl_s))
                if len(out) == limit:
                    pos = pos + offset + 1
                    break
        else:
            pos += len(ids)
    return {"items": out, "next_cursor": str(pos) if pos is not None else None}


def _estimate(params: list[DecomposeParams]) -> dict:
    """Dry run: GPU-seconds of the batch and when it would finish behind the current queue."""
    svc = services()
    means = svc.stats.snapshot()
    estimates = [svc.stats.estimate_s(p.model_dump(), means) for p in params]
    if any(e is None for e in estimates):
        raise ValidationFailed("no measured service times yet: run a job first, then ask again", field="dry_run")
    workers = max(1, svc.jobs.live_workers("decompose"))
    gpu_s = sum(estimates)
    ahead = svc.jobs.queued_count("decompose") * (gpu_s / len(estimates))
    completion_s = (ahead + gpu_s) / workers
    return {"dry_run": True, "count": len(params), "estimated_gpu_s": round(gpu_s, 2),
            "queue_ahead_gpu_s": round(ahead, 2), "workers": workers,
            "estimated_completion_s": round(completion_s, 2), "estimated_completion_at": iso(time.time() + completion_s)}


def _batch_request() -> BatchRequest:
    try:
        if request.mimetype.startswith("multipart/form-data"):
            return BatchRequest.model_validate(parse_json_field(request.form.get("batch"), "batch"))
        return BatchRequest.model_validate(request.get_json(force=True))
    except ValidationError as exc:
        raise validation_failed(exc) from exc
    except ValidationFailed:
        raise
    except Exception as exc:
        raise ValidationFailed(f"body is not valid JSON: {exc}", field="body") from exc


def _item_params(body: BatchRequest, i: int) -> DecomposeParams:
    item = body.items[i]
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


def _owned(batch_id: str) -> dict:
    check_id(batch_id, field="batch", what="batch")
    batch = batches().get(batch_id)
    if batch["tenant"] != tenant():
        raise JobNotFound(f"no batch with id {batch_id!r}", field="batch")
    return batch
