"""Sending admitted jobs to the broker (fair queues, storage/admission.py), for the API and workers.

Kind-agnostic: an admitted job's message is built from its record by layerq/messages.py message_for
(by the job's kind, with the whole message where the record keeps one), the same as the API's enqueue
and the workers' unsent-jobs sweep; the queues admitted are those layerq/queues.py TASK_OF_QUEUE names."""

from __future__ import annotations

import logging

from layerq.messages import message_for
from layerq.queues import TASK_OF_QUEUE
from layerq.webhooks import notify
from storage.services import Services

log = logging.getLogger(__name__)


def send(svc: Services, job_ids: list[str], queue: str) -> int:
    """Send one message per job still queued; confirm them sent (the unsent sweeper re-sends any
    left unconfirmed). Return how many were sent."""
    if not job_ids:
        return 0
    sent: list[str] = []
    try:
        with svc.celery.producer_or_acquire() as producer:
            for rec in svc.jobs.get_many(job_ids):
                if rec and rec["status"] == "queued":
                    task, body = message_for(rec["kind"], rec["id"], rec["input_key"], rec["params"], rec.get("message"))
                    svc.celery.send_task(task, args=[body], queue=queue, task_id=rec["id"], producer=producer)
                sent.append(rec["id"] if rec else "")
    finally:
        if sent:  # records are read in order: the first len(sent) ids are on the broker
            svc.jobs.mark_sent(job_ids[: len(sent)], queue)
    return len(sent)


def admit(svc: Services, queue: str) -> int:
    """Admit what fits on `queue` now and send it; notify the webhooks of jobs that expired in a
    backlog. Never raises: admission runs again on the next job start or heartbeat."""
    if not svc.admission.enabled:
        return 0
    try:
        ids, expired = svc.admission.admit(queue)
        ended(svc, expired)
        return send(svc, ids, queue)
    except Exception:
        log.warning("admission on %s failed; the next heartbeat retries", queue, exc_info=True)
        return 0


def sweep(svc: Services) -> None:
    """Every queue, on a worker heartbeat: expire queued jobs past their deadline, drop stale
    admissions, admit what fits."""
    for queue in TASK_OF_QUEUE:
        try:
            ended(svc, svc.admission.expire_due(queue))
            if svc.admission.enabled:
                svc.admission.forget_stale(queue)
        except Exception:
            log.warning("admission sweep of %s failed", queue, exc_info=True)
        admit(svc, queue)


def ended(svc: Services, job_ids: list[str]) -> None:
    """Webhooks of jobs that ended without a worker (expired)."""
    for rec in svc.jobs.get_many(job_ids) if job_ids else []:
        if rec and rec.get("webhook"):
            notify(svc.celery, svc.settings, rec, deliveries=svc.deliveries)
