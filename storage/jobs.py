"""Job records in Redis with atomic, guarded status transitions.

One hash per job (`<prefix>:job:<id>`) plus its transition log (`…:log`), a sorted set per queue of
the queued jobs in enqueue order (`queue_position`), and per-batch status counters. Every status
change is one Lua script (storage/lua.py) checked against `layerq.jobs.ALLOWED`, so two processes
racing on one job (a redelivery, a cancel) can never both win, and a terminal status never changes.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from layerq.errors import IllegalTransition, JobNotFound
from layerq.jobs import ALLOWED, JobStatus
from layerq.queues import DECOMPOSE_QUEUE, TASK_OF_QUEUE
from layerq.results import with_object_keys
from storage import lua
from storage.client import RedisOptions, connect
from storage.keys import Keys
from storage.retention import Retention

EXPIRED_ERROR = json.dumps({"code": "expired", "message": "the job did not start within its cancel_after_s"})
JSON_FIELDS = ("params", "progress", "error", "result", "timings", "webhook", "message")
TIME_FIELDS = ("created_at", "started_at", "finished_at", "expires_at")


@dataclass(frozen=True)
class Attempt:
    """The outcome of claiming one delivery of a job."""

    run: bool
    attempts: int = 0
    status: str = ""
    worker_lost: bool = False
    duplicate: bool = False


@dataclass(frozen=True)
class NewJob:
    """What it takes to create one queued job."""

    job_id: str
    params: dict[str, Any]
    input_key: str
    kind: str = "decompose"
    queue: str = DECOMPOSE_QUEUE
    batch_id: str = ""
    tenant: str = ""
    cache_key: str = ""
    webhook: dict[str, Any] | None = None
    priority: str = "bulk"
    """`interactive` or `bulk` (storage/admission.py admits interactive first)."""
    cancel_after_s: float = 0.0
    """Time allowed in the queue: not started by then, the job ends `expired` (0: no deadline)."""
    retain_s: int = 0
    """How long its results live once it ends; 0: the store's `ttl_s` (storage/retention.py)."""
    message: dict[str, Any] | None = None
    """The whole message body, for kinds whose message holds more than `input_key` and `params`
    (compose, combine): kept in the record so the unsent-jobs sweep can send it again."""


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Owns the job records, their transition logs and the queued/unsent sets. Kind-agnostic: a job
    of any kind is one hash; its `kind` and `queue` are fields."""

    def __init__(self, client: redis.Redis, *, key_prefix: str = "layerq", ttl_s: int = 7 * 24 * 3600,
                 fair: bool = False, retain_max_s: int = 0):
        self._r = client
        self.fair = fair
        """Jobs wait in per-tenant backlogs until admitted to the broker (storage/admission.py)."""
        self.prefix = key_prefix
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s
        # The longest a record can outlive its creation: `ttl_s` unfinished, then its retention
        # (`retain_s` defaults to `ttl_s`; the API clamps it to `retain_max_s`).
        self.record_horizon_s = ttl_s + max(ttl_s, retain_max_s)
        self._transition = client.register_script(lua.TRANSITION)
        self._begin = client.register_script(lua.BEGIN_ATTEMPT)
        self._unclaim = client.register_script(lua.UNCLAIM)
        self._progress = client.register_script(lua.PROGRESS)
        self._cancel = client.register_script(lua.CANCEL)
        self._by_priority = client.register_script(lua.QUEUED_BY_PRIORITY)
        self.retention = Retention(client, self.keys, ttl_s)

    @classmethod
    def from_url(cls, url: str, options: RedisOptions | None = None, **kwargs: Any) -> "JobStore":
        """A store on its own client; `options` name the master behind a `sentinel://` URL."""
        return cls(connect(url, options), **kwargs)

    def _common(self) -> list[Any]:
        return [repr(time.time()), self.keys.batch_prefix]

    def pipeline(self) -> redis.client.Pipeline:
        """A pipeline other stores of this package add their writes to (one round trip)."""
        return self._r.pipeline(transaction=False)

    def ping(self) -> None:
        """Raise if Redis cannot be reached (readiness probes)."""
        self._r.ping()

    def replicated(self, replicas: int, timeout_ms: int) -> int:
        """How many replicas hold every write made so far by anyone (at most `replicas`; waits up to
        `timeout_ms` for them). WAIT counts the writes of its own connection, so a barrier write goes
        first on the same connection: its replication offset is past every earlier write, the
        broker's messages included."""
        pipe = self._r.pipeline(transaction=False)
        pipe.set(self.keys.replication_barrier(), repr(time.time()))
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return int(pipe.execute()[-1])

    # --- creation and reads --------------------------------------------------------------------
    def create(self, job_id: str, *, kind: str, queue: str, params: dict[str, Any], input_key: str, **extra: Any) -> None:
        self.create_many([NewJob(job_id=job_id, params=params, input_key=input_key, kind=kind, queue=queue, **extra)])

    def create_many(self, jobs: Iterable[NewJob], *, pipe: redis.client.Pipeline | None = None) -> None:
        """Write queued jobs and their places in the queue in one round trip (10,000 at a time is fine)."""
        now = time.time()
        own = pipe is None
        pipe = pipe if pipe is not None else self._r.pipeline(transaction=False)
        by_queue: dict[str, dict[str, float]] = {}
        backlogs: dict[tuple[str, str, str], list[str]] = {}
        by_tenant: dict[str, dict[str, int]] = {}
        for n, job in enumerate(jobs):
            key = self.keys.job(job.job_id)
            record: dict[str, Any] = {
                "id": job.job_id, "kind": job.kind, "queue": job.queue, "status": JobStatus.QUEUED.value,
                "params": json.dumps(job.params), "input_key": job.input_key, "created_at": repr(now),
                "attempts": 0, "progress": '{"stage": "queued", "step": 0, "total": 0}',
                "batch_id": job.batch_id, "tenant": job.tenant, "cache_key": job.cache_key,
                "retain_s": job.retain_s or self.ttl_s,
            }
            if job.webhook:
                record["webhook"] = json.dumps(job.webhook)
            if job.queue in TASK_OF_QUEUE:  # admitted queues only: compose/combine have no priority
                record["priority"] = job.priority
            if job.cancel_after_s:
                record["deadline"] = repr(now + job.cancel_after_s)
                pipe.zadd(self.keys.deadlines(job.queue), {job.job_id: now + job.cancel_after_s})
            if job.message is not None:
                record["message"] = json.dumps(job.message)
            pipe.hset(key, mapping=record)
            pipe.expire(key, self.ttl_s)
            # Same-instant jobs keep their submission order in the queue.
            by_queue.setdefault(job.queue, {})[job.job_id] = now + n * 1e-6
            if self.fair and job.queue in TASK_OF_QUEUE:
                backlogs.setdefault((job.queue, job.priority, job.tenant), []).append(job.job_id)
            if not job.batch_id:
                by_tenant.setdefault(job.tenant, {})[job.job_id] = int(now * 1e6) + n
        for tenant, members in by_tenant.items():
            self.index_by_creation(pipe, self.keys.tenant_jobs(tenant), members, now)
        for (queue, priority, tenant), ids in backlogs.items():
            for i in range(0, len(ids), 5000):
                pipe.rpush(self.keys.backlog(queue, priority, tenant), *ids[i : i + 5000])
            # A tenant new to the round goes first (score 0); one already in it keeps its turn.
            pipe.zadd(self.keys.backlog_tenants(queue, priority), {tenant: 0}, nx=True)
        for queue, members in by_queue.items():
            pipe.zadd(self.keys.queued(queue), members)
            if not (self.fair and queue in TASK_OF_QUEUE):
                # Until its message is on the broker a job is also "unsent": if the API process dies
                # between this write and the send, a worker finds it here and sends it (mark_sent).
                # Fair queues mark a job unsent when it is admitted (storage/admission.py).
                pipe.zadd(self.keys.unsent(queue), members)
            self.retention.index_at_creation(pipe, {j: now + self.ttl_s for j in members})
        if own:
            pipe.execute()

    def create_cached(
        self, job_id: str, *, params: dict[str, Any], source: dict[str, Any], tenant: str, batch_id: str = "",
        webhook: dict[str, Any] | None = None, pipe: redis.client.Pipeline | None = None, retain_s: int = 0,
    ) -> None:
        """A job answered at once by an identical finished job: succeeded on creation, pointing at the
        source job's result objects (by their stored keys: nothing is written under the new job's
        id), and marked with `cached_from`."""
        now = repr(time.time())
        key = self.keys.job(job_id)
        p = pipe if pipe is not None else self._r.pipeline(transaction=False)
        p.hset(key, mapping={
            "id": job_id, "kind": source["kind"], "queue": source.get("queue", DECOMPOSE_QUEUE), "status": "succeeded",
            "params": json.dumps(params), "input_key": source["input_key"], "created_at": now, "started_at": now,
            "finished_at": now, "attempts": 0, "batch_id": batch_id, "tenant": tenant, "cached_from": source["id"],
            "result": json.dumps(with_object_keys(source["result"], source["id"])), "timings": "{}",
            "progress": json.dumps({"stage": "done", "step": source["progress"].get("total", 0),
                                    "total": source["progress"].get("total", 0)}),
        })
        if webhook:
            p.hset(key, "webhook", json.dumps(webhook))
        p.rpush(self.keys.job_log(job_id), f"none>succeeded@{now}")
        # A cached job lives no longer than the results it points to (nor than its own retain_s).
        own_until = time.time() + (retain_s or self.ttl_s)
        source_until = float(source.get("expires_at") or time.time() + self.remaining_ttl_s(source["id"]))
        until = min(own_until, source_until)
        p.hset(key, mapping={"retain_s": retain_s or self.ttl_s, "expires_at": repr(until)})
        for k in (key, self.keys.job_log(job_id)):
            p.expireat(k, int(until))
        if batch_id:
            p.hincrby(self.keys.batch(batch_id), "n_succeeded", 1)
        else:
            self.index_by_creation(p, self.keys.tenant_jobs(tenant), {job_id: int(float(now) * 1e6)}, float(now))
        if pipe is None:
            p.execute()

    def index_by_creation(self, pipe: redis.client.Pipeline, key: str, members: dict[str, int], now: float) -> None:
        """Add ids to a tenant's index (`key`: its jobs, or its batches), scored by creation time in
        whole microseconds (exact in a double, so a score read back is a cursor that never skips or
        repeats an id). Entries older than a record can live (`record_horizon_s`: a job retained up to
        `LAYERQ_RETAIN_MAX_S` after a queue of up to `ttl_s`) are trimmed here, on write, so the index
        lives as long as the records it points to; a record that expired sooner (most of them) is
        skipped on read."""
        pipe.zadd(key, members)
        pipe.zremrangebyscore(key, "-inf", int((now - self.record_horizon_s) * 1e6))
        pipe.expire(key, self.record_horizon_s)

    def newest_ids(self, key: str, before_us: int | None, count: int) -> list[tuple[str, int]]:
        """Up to `count` ids of an index (`index_by_creation`) created before `before_us` (microseconds
        since the epoch; None: from the newest), newest first, each with its creation time in
        microseconds (the cursor of the next page: a time, not an offset, so new ids never shift a page)."""
        high = "+inf" if before_us is None else f"({before_us}"
        rows = self._r.zrevrangebyscore(key, high, "-inf", start=0, num=count, withscores=True)
        return [(member, int(score)) for member, score in rows]

    def tenant_job_ids(self, tenant: str, before_us: int | None, count: int) -> list[tuple[str, int]]:
        """A tenant's (non-batch) jobs, newest first (`newest_ids`)."""
        return self.newest_ids(self.keys.tenant_jobs(tenant), before_us, count)

    def remaining_ttl_s(self, job_id: str) -> int:
        """Seconds until the job's record expires (`ttl_s` when it has no expiry or is gone)."""
        ttl = self._r.ttl(self.keys.job(job_id))
        return ttl if ttl and ttl > 0 else self.ttl_s

    def cache_key_of(self, job_id: str) -> str:
        """The result-cache key a job was created under ('' when it opted out)."""
        return self._r.hget(self.keys.job(job_id), "cache_key") or ""

    def mark_sent(self, job_ids: list[str], queue: str = DECOMPOSE_QUEUE, chunk: int = 5000) -> None:
        pipe = self._r.pipeline(transaction=False)
        for i in range(0, len(job_ids), chunk):
            pipe.zrem(self.keys.unsent(queue), *job_ids[i : i + chunk])
        pipe.execute()

    def unsent_since(self, older_than_s: float, queue: str = DECOMPOSE_QUEUE, limit: int = 1000) -> list[str]:
        """Jobs created over `older_than_s` ago whose message was never confirmed sent."""
        return self._r.zrangebyscore(self.keys.unsent(queue), 0, time.time() - older_than_s, start=0, num=limit)

    def get(self, job_id: str) -> dict[str, Any]:
        """The record with JSON fields decoded; raise JobNotFound when unknown or expired."""
        raw = self._r.hgetall(self.keys.job(job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        return decode_record(raw)

    def get_many(self, job_ids: list[str]) -> list[dict[str, Any] | None]:
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [decode_record(raw) if raw else None for raw in pipe.execute()]

    def transition_log(self, job_id: str) -> list[str]:
        return self._r.lrange(self.keys.job_log(job_id), 0, -1)

    def queue_position(self, queue: str, job_id: str) -> int | None:
        return self._r.zrank(self.keys.queued(queue), job_id)

    def waiting_ids(self, queue: str, count: int) -> list[str]:
        """Ids of up to `count` jobs admitted to the broker and not yet taken (fair queues: the next
        to start), then of up to `count` queued jobs in arrival order. Reads only."""
        pipe = self._r.pipeline(transaction=False)
        pipe.zrange(self.keys.admitted(queue), 0, count - 1)
        pipe.zrange(self.keys.queued(queue), 0, count - 1)
        admitted, queued = pipe.execute()
        return list(dict.fromkeys([*admitted, *queued]))

    def queued_count(self, queue: str) -> int:
        return int(self._r.zcard(self.keys.queued(queue)))

    def queued_by_priority(self, queue: str, scan_max: int = 20_000) -> dict[str, int]:
        """Jobs queued on `queue` by priority (`interactive`, `bulk`; `none` for jobs without one: the
        cpu queue's compose and combine). One script reads each queued job's priority inside Redis,
        the oldest `scan_max` of them (about 1 µs each, so a scrape blocks Redis for ~20 ms at most);
        any beyond are counted as `uncounted`, so the sum over priorities is always the exact depth."""
        total, counted, *pairs = self._by_priority(keys=[self.keys.queued(queue)], args=[self.keys.job(""), scan_max])
        out = {(pairs[i] or "none"): int(pairs[i + 1]) for i in range(0, len(pairs), 2)}
        if int(total) > int(counted):
            out["uncounted"] = int(total) - int(counted)
        return out

    # --- transitions ---------------------------------------------------------------------------
    def transition(self, job_id: str, new: JobStatus, *, queue: str | None = None, **fields: Any) -> JobStatus:
        """Move a job to `new` if ALLOWED from its current status; return the previous status. A job
        leaving `queued` leaves its queue's positions: `queue` names it, or (None) it is read from
        the record, so no caller can leave a stale entry in another kind's queue.

        Raise IllegalTransition (naming the current status) when refused, JobNotFound when missing."""
        if queue is None:
            queue = self._r.hget(self.keys.job(job_id), "queue") or DECOMPOSE_QUEUE
        allowed_from = [s.value for s, targets in ALLOWED.items() if new in targets]
        args: list[Any] = [*self._common(), "," + ",".join(allowed_from) + ",", new.value]
        for name, value in fields.items():
            args += [name, value if isinstance(value, str) else json.dumps(value)]
        outcome, current = self._transition(keys=[self.keys.job(job_id), self.keys.queued(queue)], args=args)
        if outcome == "missing":
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        if outcome == "refused":
            raise IllegalTransition(f"job {job_id} is {current}; cannot move to {new.value}")
        if new.is_terminal():
            self.retention.seal([job_id])
        return JobStatus(current)

    def begin_attempt(
        self, job_id: str, *, max_deliveries: int, worker: str = "", alive_within_s: float = 45.0,
        queue: str = DECOMPOSE_QUEUE,
    ) -> Attempt:
        """Claim a delivery: queued/running → running (attempts + 1). A terminal job is skipped (a
        redelivered message does nothing), a job running on a live worker is a duplicate, and past
        `max_deliveries` the job fails with `worker_lost`."""
        error = json.dumps(
            {"code": "worker_lost", "message": f"job was delivered {max_deliveries} times without finishing"}
        )
        keys = [self.keys.job(job_id), self.keys.queued(queue), self.keys.workers(queue), self.keys.admitted(queue)]
        args = [*self._common(), max_deliveries, error, worker, time.time() - alive_within_s, EXPIRED_ERROR]
        outcome, detail = self._begin(keys=keys, args=args)
        if outcome == "lost" or (outcome == "skip" and detail in (JobStatus.CANCELED.value, JobStatus.EXPIRED.value)):
            self.retention.seal([job_id])  # ended inside the script: start its retention clock
        if outcome == "run":
            return Attempt(run=True, attempts=int(detail), status="running")
        if outcome == "lost":
            return Attempt(run=False, attempts=int(detail), status="failed", worker_lost=True)
        if outcome == "duplicate":
            return Attempt(run=False, status="running", duplicate=True)
        if outcome == "missing":
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        return Attempt(run=False, status=detail)

    def unclaim(self, job_id: str, worker: str) -> bool:
        """`worker` hands its running job back for a retry (a transient fault): the job stays
        `running` with no owner, so the retry's delivery runs on whichever worker takes it. Without
        this, another live worker would refuse that delivery as a duplicate and the job would stay
        `running` for good. Returns whether `worker` owned the job."""
        return bool(self._unclaim(keys=[self.keys.job(job_id)], args=[worker]))

    def set_progress(self, job_id: str, stage: str, step: int = 0, total: int = 0) -> JobStatus | None:
        """Record progress while running; return the job's status (the worker stops on `canceling`)."""
        prog = json.dumps({"stage": stage, "step": step, "total": total})
        cur = self._progress(keys=[self.keys.job(job_id)], args=[prog])
        return JobStatus(cur) if cur else None

    def status(self, job_id: str) -> JobStatus | None:
        cur = self._r.hget(self.keys.job(job_id), "status")
        return JobStatus(cur) if cur else None

    def cancel(self, job_ids: list[str], *, queue: str = DECOMPOSE_QUEUE, queues: tuple[str, ...] = (),
               chunk: int = 1000) -> dict[str, int]:
        """Cancel jobs: queued ones end `canceled` now, running ones become `canceling`. `queues`, when
        given, are every queue the jobs may wait in (instead of `queue`)."""
        totals = {"canceled": 0, "canceling": 0, "already_finished": 0, "missing": 0}
        queued_sets = [self.keys.queued(q) for q in (queues or (queue,))]
        for i in range(0, len(job_ids), chunk):
            keys = [self.keys.job(j) for j in job_ids[i : i + chunk]]
            counts = self._cancel(keys=queued_sets, args=[*self._common(), *keys])
            for name, n in zip(totals, counts):
                totals[name] += int(n)
            if int(counts[0]):
                self.retention.seal(job_ids[i : i + chunk])  # only the ones that ended are sealed
        return totals

    def succeed(self, job_id: str, result: dict[str, Any], timings: dict[str, float], *,
                queue: str | None = None) -> JobStatus:
        steps = result.get("steps", 0)
        return self.transition(
            job_id, JobStatus.SUCCEEDED, queue=queue, finished_at=repr(time.time()), result=result, timings=timings,
            progress={"stage": "done", "step": steps, "total": steps},
        )

    def fail(self, job_id: str, code: str, message: str, timings: dict[str, float] | None = None, *,
             queue: str | None = None) -> JobStatus:
        fields: dict[str, Any] = {"finished_at": repr(time.time()), "error": {"code": code, "message": message}}
        if timings:
            fields["timings"] = timings
        return self.transition(job_id, JobStatus.FAILED, queue=queue, **fields)

    def mark_canceled(self, job_id: str, timings: dict[str, float] | None = None, *,
                      queue: str | None = None) -> JobStatus:
        return self.transition(job_id, JobStatus.CANCELED, queue=queue, finished_at=repr(time.time()),
                               timings=timings or {})


def decode_record(raw: dict[str, str]) -> dict[str, Any]:
    rec: dict[str, Any] = dict(raw)
    for name in JSON_FIELDS:
        if rec.get(name):
            rec[name] = json.loads(rec[name])
    if rec.get("deadline"):
        rec["deadline"] = float(rec["deadline"])
    for name in TIME_FIELDS:
        if rec.get(name):
            rec[name] = float(rec[name])
    rec["attempts"] = int(rec.get("attempts", 0))
    return rec
