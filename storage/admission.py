"""Fair admission: per-tenant backlogs in Redis, admitted to the Celery broker a few at a time.

A Redis list is FIFO, so a tenant's 10,000-job batch sent straight to the broker would hold every
later job back for the batch's duration. With fair queues (`LAYERQ_FAIR_QUEUES`, the default) a new
job waits instead in its tenant's backlog (`<p>:backlog:<queue>:<priority>:<tenant>`, written by
JobStore.create_many), and only `live workers + LAYERQ_ADMIT_AHEAD` jobs per queue are on the
broker and not yet started. One Lua script (storage/lua.py ADMIT) fills that room: interactive
before bulk, except every `LAYERQ_BULK_EVERY`-th admission which prefers bulk (so bulk is never
starved), and round robin across the tenants of a priority (the tenant served longest ago first).

Admission runs whenever room may appear: after a submission (API), when a worker takes a message
(begin_attempt leaves `admitted`), and on every worker heartbeat (worker/liveness.py), so nothing
stalls if a process dies between two steps. An admitted job is also marked unsent until its message
is confirmed sent, so the unsent-jobs sweeper re-sends it if its sender died. Kind-agnostic: every
queue named in layerq/queues.py TASK_OF_QUEUE is admitted the same way.
"""

from __future__ import annotations

import time

import redis

from layerq.jobs import JobStatus
from storage import lua
from storage.jobs import EXPIRED_ERROR, JobStore

PRIORITIES = ("interactive", "bulk")


class Admission:
    def __init__(self, client: redis.Redis, jobs: JobStore, *, ahead: int = 0, bulk_every: int = 4,
                 alive_within_s: float = 45.0) -> None:
        self._r = client
        self.jobs = jobs
        self.keys = jobs.keys
        self.ahead = ahead
        self.bulk_every = bulk_every
        self.alive_within_s = alive_within_s
        self._admit = client.register_script(lua.ADMIT)
        self._expire = client.register_script(lua.EXPIRE)

    @property
    def enabled(self) -> bool:
        return self.jobs.fair

    def admit(self, queue: str) -> tuple[list[str], list[str]]:
        """Admit what fits now; return (job ids to send to the broker, job ids that expired in a
        backlog). The caller sends the first and confirms with JobStore.mark_sent."""
        if not self.enabled:
            return [], []
        k = self.keys
        now = time.time()
        out = self._admit(
            keys=[k.admitted(queue), k.workers(queue), k.backlog_tenants(queue, "interactive"),
                  k.backlog_tenants(queue, "bulk"), k.admit_turn(queue), k.unsent(queue), k.queued(queue)],
            args=[repr(now), k.batch_prefix, k.backlog_prefix(queue), now - self.alive_within_s, self.ahead,
                  self.bulk_every, k.job(""), EXPIRED_ERROR],
        )
        expired = [i[1:] for i in out if i.startswith("!")]
        self.jobs.retention.seal(expired)  # ended inside the script: start their retention clocks
        return [i for i in out if not i.startswith("!")], expired

    def taken(self, queue: str, job_id: str) -> None:
        """A worker took the job's message: it no longer counts against the room on the broker."""
        if self.enabled:
            self._r.zrem(self.keys.admitted(queue), job_id)

    def expire_due(self, queue: str, limit: int = 1000) -> list[str]:
        """End `expired` every queued job of `queue` past its deadline (wherever it waits); return their ids."""
        k = self.keys
        expired = self._expire(keys=[k.deadlines(queue), k.queued(queue)],
                               args=[repr(time.time()), k.batch_prefix, k.job(""), EXPIRED_ERROR, limit])
        self.jobs.retention.seal(expired)
        return expired

    def forget_stale(self, queue: str) -> int:
        """Drop `admitted` entries of jobs no longer queued (canceled or expired on the broker and
        never taken, or records gone), so lost messages cannot shrink the room for ever."""
        ids = self._r.zrange(self.keys.admitted(queue), 0, -1)
        stale = [i for i, rec in zip(ids, self.jobs.get_many(ids)) if not rec or rec["status"] != "queued"]
        if stale:
            self._r.zrem(self.keys.admitted(queue), *stale)
        return len(stale)

    def position(self, rec: dict) -> int | None:
        """Jobs expected to start before this queued one under fair admission: those on the broker
        ahead of it, or (in a backlog) all on the broker plus, for each tenant of its priority, as
        many as would be admitted before its turn comes round (plus every waiting interactive job
        for a bulk one). An estimate: new tenants arriving later may still go first."""
        if rec.get("status") != JobStatus.QUEUED.value:
            return None
        k, queue, job_id = self.keys, rec.get("queue") or rec["kind"], rec["id"]
        rank = self._r.zrank(k.admitted(queue), job_id)
        if rank is not None:
            return int(rank)
        priority, tenant = rec.get("priority") or "bulk", rec.get("tenant", "")
        own = self._r.lpos(k.backlog(queue, priority, tenant), job_id)
        if own is None:  # being admitted right now
            return int(self._r.zcard(k.admitted(queue)))
        pipe = self._r.pipeline(transaction=False)
        pipe.zcard(k.admitted(queue))
        tenants = self._r.zrange(k.backlog_tenants(queue, priority), 0, -1)
        for other in tenants:
            if other != tenant:
                pipe.llen(k.backlog(queue, priority, other))
        if priority == "bulk":
            for other in self._r.zrange(k.backlog_tenants(queue, "interactive"), 0, -1):
                pipe.llen(k.backlog(queue, "interactive", other))
        first, *rest = pipe.execute()
        others = rest[: len(tenants) - (tenant in tenants)]
        interactive = rest[len(others):]
        return int(first + own + sum(min(n, own + 1) for n in others) + sum(interactive))
