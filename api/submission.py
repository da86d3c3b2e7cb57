"""The one submission path behind `POST /v1/jobs` and `POST /v1/batches`: uploads checked against the
caller, the result cache, inputs stored, records written, messages sent.

Jobs are written to Redis before their messages are sent, so a worker always finds the record of the
message it takes. Every input is checked before anything is written: a bad item rejects the whole
request and leaves nothing behind."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from api.durability import ensure_replicated
from layerq import dispatch, objects
from layerq.errors import JobNotFound, LayerqError, QueueUnavailable, ValidationFailed
from layerq.images import png_bytes
from layerq.messages import message_for
from layerq.params import DecomposeParams
from layerq.queues import DECOMPOSE_QUEUE, TASK_OF_QUEUE
from layerq.scheduling import Schedule
from layerq.webhooks import WebhookSpec, check_request, notify
from storage.jobs import NewJob, new_job_id
from storage.services import Services

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One job to create: its parameters and its input, either an upload (`input_key`) or image
    bytes sent with the request (`data`, already decoded and checked as `image`)."""

    params: DecomposeParams | Any
    """DecomposeParams, or EditJobParams for an edit."""
    field: str
    """Where the item's input came from, for errors: `input_key`, `items.3.input_key`."""
    input_key: str | None = None
    data: bytes | None = None
    image: Image.Image | None = None
    kind: str = "decompose"
    queue: str = DECOMPOSE_QUEUE
    source_key: str | None = None
    """An object already checked to belong to the caller (the layer an edit changes): read by the
    worker as the job's input; no upload check, nothing stored."""
    source_digest: str | None = None
    """What stands for the input bytes in the result-cache key when they are not read here."""
    model: str | None = None
    """The model in the result-cache key (default: the decompose model)."""
    parent: tuple[str, int, str] | None = None
    """(job id, layer, the job owning its objects) when the item is made from a finished job's layer
    (an edit): linked in `Lineage`, so the job view shows it and the reaper keeps that job's objects
    while this one is unfinished."""


@dataclass
class Submitted:
    job_ids: list[str] = field(default_factory=list)
    cached: set[str] = field(default_factory=set)
    """Ids of the jobs answered from the result cache (created succeeded)."""
    answer: Any = None
    """What `before_send` returned."""


def check_webhook(spec: WebhookSpec | None, svc: Services) -> dict[str, Any] | None:
    if spec is None:
        return None
    if not svc.settings.webhook_secret:
        raise ValidationFailed("webhooks are not enabled on this server (no LAYERQ_WEBHOOK_SECRET)", field="webhook")
    check_request(spec, svc.settings)  # refuses private and loopback targets unless allow-listed
    return spec.model_dump()


def check_uploads(svc: Services, tenant: str, items: list[Item]) -> None:
    """Every upload an item names was handed out to this tenant; another tenant's (or one never
    handed out) reads as absent: 404 naming the item's field."""
    uploads = [item for item in items if item.input_key is not None]
    owners = svc.uploads.owners([item.input_key for item in uploads if item.input_key])
    for item, owner in zip(uploads, owners):
        if owner != tenant:
            raise JobNotFound(f"no upload {item.input_key!r}", field=item.field)


def submit(
    svc: Services, tenant: str, items: list[Item], *, webhook: dict[str, Any] | None, use_cache: bool,
    batch_id: str = "", batch_meta: dict[str, Any] | None = None,
    before_send: Callable[[Submitted], Any] | None = None, schedule: Schedule = Schedule(),
    retain_s: int | None = None,
) -> Submitted:
    """Create one job per item (in a batch when `batch_id` is given) and enqueue those that must run.

    `before_send` runs once the records are written and before any message is sent, so an answer
    built there shows the jobs as accepted (queued, with their queue position), not as whatever an
    idle worker has made of them a moment later."""
    check_uploads(svc, tenant, items)
    retain_s = min(retain_s or svc.settings.job_ttl_s, svc.settings.retain_max_s)  # clamped, not refused
    out = Submitted()
    runnable: list[NewJob] = []
    cached: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for item in items:
        job_id = new_job_id()
        out.job_ids.append(job_id)
        params = item.params.model_dump()
        # What every job of the request shares, whichever way its input came.
        common = {"batch_id": batch_id, "tenant": tenant, "webhook": webhook, "retain_s": retain_s,
                  "kind": item.kind, "queue": item.queue, **schedule.job_fields()}
        if item.data is None and item.source_digest is None:  # an upload: bytes unread here, so no cache key
            runnable.append(NewJob(job_id, params, item.input_key or "", **common))
            continue
        # An opt-out (`cache: false`) neither reads the cache nor writes it: without a key on its record
        # its worker cannot point the entry at it (ResultCache.remember), so the entry stays the
        # first identical job's.
        ckey = svc.cache.key_for(tenant, item.source_digest or hashlib.sha256(item.data or b"").hexdigest(),
                                 params, item.model or svc.settings.model) if use_cache else ""
        source = svc.cache.lookup(ckey, tenant) if use_cache else None
        if source is not None:
            cached.append((job_id, params, source))
            out.cached.add(job_id)
            continue
        if item.source_key is not None:
            runnable.append(NewJob(job_id, params, item.source_key, cache_key=ckey, **common))
            continue
        assert item.image is not None
        svc.store.put(objects.input_key(job_id), png_bytes(item.image), "image/png")
        runnable.append(NewJob(job_id, params, objects.input_key(job_id), cache_key=ckey, **common))
    if batch_id:
        svc.batches.create(batch_id, runnable, tenant=tenant, meta=batch_meta or {}, all_ids=out.job_ids,
                           cached=cached, retain_s=retain_s)
    else:
        pipe = svc.jobs.pipeline()
        svc.jobs.create_many(runnable, pipe=pipe)
        for job_id, params, source in cached:
            svc.jobs.create_cached(job_id, params=params, source=source, tenant=tenant, webhook=webhook, pipe=pipe,
                                   retain_s=retain_s)
        pipe.execute()
    parents = [(job_id, item.parent) for job_id, item in zip(out.job_ids, items)
               if item.parent is not None and job_id not in out.cached]
    if parents:  # before any message is sent: no worker runs the child before its source is held
        pipe = svc.lineage.pipeline()
        for job_id, (parent_id, layer, owner_id) in parents:
            svc.lineage.link(job_id, parent_id, layer, pipe=pipe, owner_id=owner_id)
        pipe.execute()
    if before_send is not None:
        out.answer = before_send(out)
    send(svc, runnable)
    ensure_replicated(svc, runnable, [job_id for job_id, _, _ in cached])
    if webhook and cached:
        # Jobs answered from the cache never reach a worker: their `completed` events go from here.
        for rec in svc.jobs.get_many([job_id for job_id, _, _ in cached]):
            if rec:
                notify(svc.celery, svc.settings, rec, deliveries=svc.deliveries)
    return out


def send(svc: Services, jobs: list[NewJob]) -> None:
    """Start written jobs on their way to a worker: with fair queues they wait in their tenant's
    backlog and what fits is admitted now (layerq/dispatch.py); any other message goes now."""
    admitted_queues: set[str] = set()
    now: list[NewJob] = []  # the cpu queue's compose and combine jobs, and every job with fair queues off
    for job in jobs:  # one pass: a batch may hold 10,000 jobs
        if svc.jobs.fair and job.queue in TASK_OF_QUEUE:
            admitted_queues.add(job.queue)
        else:
            now.append(job)
    for queue in sorted(admitted_queues):
        dispatch.admit(svc, queue)
    enqueue(svc, now)


def enqueue(svc: Services, jobs: list[NewJob]) -> None:
    """Send one message per job (one producer connection for all). If the broker is unreachable the
    jobs not yet sent are failed with `enqueue_failed` so none sits queued forever."""
    if not jobs:
        return
    sent = 0
    try:
        with svc.celery.producer_or_acquire() as producer:
            for job in jobs:
                task, body = message_for(job.kind, job.job_id, job.input_key, job.params, job.message)
                svc.celery.send_task(task, args=[body], queue=job.queue, task_id=job.job_id, producer=producer)
                sent += 1
    except Exception as exc:
        log.exception("enqueue failed after %d of %d jobs", sent, len(jobs))
        for job in jobs[sent:]:
            try:
                svc.jobs.fail(job.job_id, "enqueue_failed", f"could not enqueue the job: {exc}", queue=job.queue)
            except LayerqError:
                pass
        raise QueueUnavailable("the job queue is unavailable; try again") from exc
    finally:
        # Sent or failed, none of them is waiting for the unsent-jobs sweeper any more.
        try:
            by_queue: dict[str, list[str]] = {}
            for job in jobs:
                by_queue.setdefault(job.queue, []).append(job.job_id)
            for queue, ids in by_queue.items():
                svc.jobs.mark_sent(ids, queue)
        except Exception:  # the sweeper re-sends them later; a duplicate message is harmless
            log.warning("could not mark %d jobs as sent", len(jobs), exc_info=True)
