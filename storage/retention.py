"""Result retention: how long a finished job's record and objects live, and the reaper that deletes
the objects once that time has passed.

A job carries `retain_s` (its own, or `LAYERQ_JOB_TTL_S`). While it is queued or running its record
lives `job_ttl_s` from creation, as before. When it ends, it is *sealed*: `expires_at` = end +
`retain_s` is written on the record, the record and its log expire at that instant, and the job id
goes into the retention index (a sorted set by `expires_at`). Records vanish from Redis on their
own; objects do not, so the reaper (run by CPU workers, worker/reaper.py) walks the index and
deletes the prefix `jobs/<id>/` of every job that is due. Every job is also indexed at creation
(at the moment its record would expire unsealed), so a job whose record expired before it ended
(its process died mid-way, a queue longer than `job_ttl_s`) still has its input deleted.

The reaper never deletes a job that is queued, running or canceling, nor one whose layer set an
unfinished child (a recursive decomposition, compose or edit made from it, storage/lineage.py) has
still to read, directly or through a cached copy of it (the copy's children are the job's readers):
an index entry whose record says so is pushed back. A reaped job's lineage goes with
it (its parent and children links, its id in its parent's list, its children's links to it); a
finished child keeps its own objects, it never points into its parent's. Deleting is idempotent (a
prefix already gone deletes nothing), and the record is deleted before the objects, so the result
cache (which only answers from a live succeeded record) can never hand out a job whose objects are
being deleted.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from layerq import objects
from storage.base import ObjectStore
from storage.keys import Keys

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "canceled", "expired")
RECHECK_S = 60.0
"""A due index entry whose job is still unfinished is looked at again this much later."""


@dataclass
class ReapReport:
    """What one reaper pass did."""

    jobs: list[str] = field(default_factory=list)
    """Jobs whose objects were deleted."""
    objects: int = 0
    postponed: int = 0
    """Due entries whose job had not ended (or had not reached its `expires_at`)."""


class Retention:
    def __init__(self, client: redis.Redis, keys: Keys, default_retain_s: int) -> None:
        self._r = client
        self.keys = keys
        self.default_retain_s = default_retain_s

    def index_at_creation(self, pipe: redis.client.Pipeline, members: dict[str, float]) -> None:
        """Index new jobs at the time their (unsealed) records expire: the backstop for jobs that
        never get sealed."""
        if members:
            pipe.zadd(self.keys.retention(), members)

    def seal(self, job_ids: Iterable[str], now: float | None = None) -> None:
        """Start the retention clock of the jobs among `job_ids` that have ended (and were not
        sealed before: sealing twice must not extend a result's life)."""
        ids = list(job_ids)
        if not ids:
            return
        now = time.time() if now is None else now
        read = self._r.pipeline(transaction=False)
        for job_id in ids:
            read.hmget(self.keys.job(job_id), "status", "finished_at", "retain_s", "expires_at")
        write = self._r.pipeline(transaction=False)
        due: dict[str, float] = {}
        for job_id, (status, finished_at, retain_s, expires_at) in zip(ids, read.execute()):
            if status not in TERMINAL or expires_at:
                continue
            at = float(finished_at or now) + int(retain_s or self.default_retain_s)
            due[job_id] = at
            key = self.keys.job(job_id)
            write.hset(key, "expires_at", repr(at))
            for k in (key, self.keys.job_log(job_id)):
                write.expireat(k, math.ceil(at))
            # Its lineage (storage/lineage.py) lives as long as the record, never shorter (GT).
            for k in (self.keys.parent(job_id), self.keys.children(job_id)):
                write.expireat(k, math.ceil(at), gt=True)
        if due:
            write.zadd(self.keys.retention(), due)
            write.execute()

    def due(self, now: float, limit: int) -> list[str]:
        return self._r.zrangebyscore(self.keys.retention(), 0, now, start=0, num=limit)

    def reap(self, store: ObjectStore, *, now: float | None = None, limit: int = 500) -> ReapReport:
        """Delete the objects (and what is left of the records) of at most `limit` due jobs."""
        now = time.time() if now is None else now
        report = ReapReport()
        ids = self.due(now, limit)
        if not ids:
            return report
        read = self._r.pipeline(transaction=False)
        for job_id in ids:
            read.hmget(self.keys.job(job_id), "status", "expires_at", "cache_key")
            read.lrange(self.keys.children(job_id), 0, -1)
            read.lrange(self.keys.readers(job_id), 0, -1)
        rows = read.execute()
        postpone: dict[str, float] = {}
        for job_id, (status, expires_at, cache_key), children, readers in zip(ids, rows[::3], rows[1::3], rows[2::3]):
            if status is not None and status not in TERMINAL:
                postpone[job_id] = now + RECHECK_S  # never a queued or running job's objects
                continue
            if self._unfinished(children + readers):
                # A recursive decomposition, compose or edit still to run reads this job's layers
                # (made from it, or from a cached job pointing at its objects).
                postpone[job_id] = now + RECHECK_S
                continue
            if status is not None and (not expires_at or float(expires_at) > now):
                # Ended but not sealed yet (its worker is sealing it right now) or sealed for later.
                postpone[job_id] = float(expires_at) if expires_at else now + RECHECK_S
                continue
            # Record first, then objects: from here on no cache lookup can answer with this job.
            parent = self._r.get(self.keys.parent(job_id))
            pipe = self._r.pipeline(transaction=False)
            pipe.delete(self.keys.job(job_id), self.keys.job_log(job_id))
            # Its lineage goes with it: no parent lists a child that is gone, no child names a
            # parent whose layers are gone.
            pipe.delete(self.keys.parent(job_id), self.keys.children(job_id), self.keys.readers(job_id))
            if parent:
                pipe.lrem(self.keys.children(json.loads(parent)["job_id"]), 0, job_id)
            for child in children:
                pipe.delete(self.keys.parent(child))
            pipe.execute()
            if cache_key and self._r.get(cache_key) == job_id:
                self._r.delete(cache_key)  # a later identical job may own the entry by now
            report.objects += store.delete_prefix(objects.job_prefix(job_id))
            self._r.zrem(self.keys.retention(), job_id)
            report.jobs.append(job_id)
        if postpone:
            self._r.zadd(self.keys.retention(), postpone)
            report.postponed = len(postpone)
        return report

    def _unfinished(self, job_ids: list[str]) -> bool:
        if not job_ids:
            return False
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "status")
        return any(status is not None and status not in TERMINAL for status in pipe.execute())

    def lock(self, holder: str, ttl_s: float) -> bool:
        """Take the reaper lock for one pass (several CPU workers: one reaps at a time)."""
        return bool(self._r.set(self.keys.reaping_results(), holder, nx=True, px=max(1, int(ttl_s * 1000))))

    def unlock(self, holder: str) -> None:
        if self._r.get(self.keys.reaping_results()) == holder:
            self._r.delete(self.keys.reaping_results())

    def pending(self) -> int:
        return int(self._r.zcard(self.keys.retention()))
