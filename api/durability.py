"""Durable submissions (`LAYERQ_REDIS_WAIT_REPLICAS`): a submission is answered 202 only once the
replicas hold its jobs and their messages, so a Redis failover right after the answer cannot lose a
job the client was told exists. docs/redis-ha.md states the window this closes and its cost."""

from __future__ import annotations

import logging

from layerq.errors import NotReplicated
from storage.client import STORE_DOWN
from storage.jobs import NewJob
from storage.services import Services

log = logging.getLogger(__name__)


def ensure_replicated(svc: Services, jobs: list[NewJob], other_ids: list[str]) -> None:
    """Return once `redis_wait_replicas` replicas have every write so far; else cancel the jobs (best
    effort: the master may be gone) and raise NotReplicated, which the API answers with 503."""
    wanted = svc.settings.redis_wait_replicas
    if wanted <= 0:
        return
    try:
        acked = svc.jobs.replicated(wanted, svc.settings.redis_wait_timeout_ms)
    except STORE_DOWN as exc:
        log.warning("replication check failed: %s", exc)
        acked = -1
    if acked >= wanted:
        return
    log.warning("only %d of %d replicas confirmed %d new jobs: canceling them", max(acked, 0), wanted,
                len(jobs) + len(other_ids))
    by_queue: dict[str, list[str]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job.job_id)
    try:
        for queue, ids in by_queue.items():
            svc.jobs.cancel(ids, queue=queue)
    except Exception:  # noqa: BLE001 - the store may be unreachable; the answer is 503 either way
        log.warning("could not cancel unreplicated jobs", exc_info=True)
    raise NotReplicated(f"the job store could not confirm {wanted} replica(s) in time; nothing was accepted, "
                        "try again")
