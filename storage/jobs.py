"""Job records in Redis with atomic, guarded status transitions.

One hash per job (`<prefix>:job:<id>`), a sorted set per queue holding the queued jobs in enqueue
order (for `queue_position`), and a sorted set of live workers (for ETAs). Every status change runs
as one Lua script that checks the current status against `layerq.jobs.ALLOWED`, so two processes
racing on one job (a redelivery, a cancel) can never both win, and a terminal status never changes.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis

from layerq.errors import IllegalTransition, JobNotFound
from layerq.jobs import ALLOWED, JobStatus

# KEYS: job hash, queue zset. ARGV: allowed current statuses (",a,b,"), new status, then field/value pairs.
# Returns {"ok"|"refused"|"missing", current status}.
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if not string.find(ARGV[1], ',' .. cur .. ',', 1, true) then return {'refused', cur} end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] ~= 'queued' then redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id')) end
return {'ok', cur}
"""

# Claim a delivery of a job. KEYS: job hash, queue zset. ARGV: now, max deliveries, error json.
# Returns {"run", attempts} | {"skip", status} | {"lost", attempts} | {"missing", ""}.
_BEGIN_ATTEMPT = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {'missing', ''} end
if cur == 'succeeded' or cur == 'failed' or cur == 'canceled' then return {'skip', cur} end
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], 'id'))
if cur == 'canceling' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  return {'skip', 'canceled'}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'status', 'failed', 'finished_at', ARGV[1], 'error', ARGV[3])
  return {'lost', tostring(attempts)}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
return {'run', tostring(attempts)}
"""

# Progress is written only while the job runs; the answer tells the worker if it should stop.
_PROGRESS = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur == 'running' then redis.call('HSET', KEYS[1], 'progress', ARGV[1]) end
return cur or ''
"""


@dataclass(frozen=True)
class Attempt:
    """The outcome of claiming one delivery of a job."""

    run: bool
    attempts: int = 0
    status: str = ""
    worker_lost: bool = False


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str = "layerq", ttl_s: int = 7 * 24 * 3600):
        self.r = client
        self.prefix = key_prefix
        self.ttl_s = ttl_s
        self._transition = client.register_script(_TRANSITION)
        self._begin = client.register_script(_BEGIN_ATTEMPT)
        self._progress = client.register_script(_PROGRESS)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)

    # --- keys ----------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def queue_key(self, queue: str) -> str:
        return f"{self.prefix}:queued:{queue}"

    def workers_key(self, queue: str) -> str:
        return f"{self.prefix}:workers:{queue}"

    def stats_key(self, kind: str) -> str:
        return f"{self.prefix}:stats:{kind}"

    # --- creation and reads --------------------------------------------------------------------
    def create(self, job_id: str, *, kind: str, queue: str, params: dict[str, Any], input_key: str) -> None:
        """Write a queued job and its place in the queue in one round trip."""
        now = time.time()
        key = self.job_key(job_id)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "id": job_id,
                "kind": kind,
                "queue": queue,
                "status": JobStatus.QUEUED.value,
                "params": json.dumps(params),
                "input_key": input_key,
                "created_at": repr(now),
                "attempts": 0,
                "progress": json.dumps({"stage": "queued", "step": 0, "total": 0}),
            },
        )
        pipe.expire(key, self.ttl_s)
        pipe.zadd(self.queue_key(queue), {job_id: now})
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any]:
        """The raw record with JSON fields decoded; raise JobNotFound when unknown or expired."""
        raw = self.r.hgetall(self.job_key(job_id))
        if not raw:
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        rec: dict[str, Any] = dict(raw)
        for name in ("params", "progress", "error", "result", "timings"):
            if name in rec:
                rec[name] = json.loads(rec[name])
        for name in ("created_at", "started_at", "finished_at"):
            if name in rec:
                rec[name] = float(rec[name])
        rec["attempts"] = int(rec.get("attempts", 0))
        return rec

    def queue_position(self, queue: str, job_id: str) -> int | None:
        return self.r.zrank(self.queue_key(queue), job_id)

    # --- transitions ---------------------------------------------------------------------------
    def transition(self, job_id: str, new: JobStatus, **fields: Any) -> JobStatus:
        """Move a job to `new` if ALLOWED from its current status; return the previous status.

        Raise IllegalTransition (with the current status) when refused, JobNotFound when missing."""
        allowed_from = [s.value for s, targets in ALLOWED.items() if new in targets]
        args: list[Any] = ["," + ",".join(allowed_from) + ",", new.value]
        for name, value in fields.items():
            args += [name, value if isinstance(value, str) else json.dumps(value)]
        outcome, current = self._transition(keys=[self.job_key(job_id), self._queue_of(job_id)], args=args)
        if outcome == "missing":
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        if outcome == "refused":
            raise IllegalTransition(f"job {job_id} is {current}; cannot move to {new.value}")
        return JobStatus(current)

    def begin_attempt(self, job_id: str, *, max_deliveries: int) -> Attempt:
        """Claim a delivery: queued/running → running (attempts + 1). A terminal job is skipped, so a
        redelivered message does nothing; past `max_deliveries` the job fails with `worker_lost`."""
        error = json.dumps(
            {"code": "worker_lost", "message": f"job was delivered {max_deliveries} times without finishing"}
        )
        outcome, detail = self._begin(
            keys=[self.job_key(job_id), self._queue_of(job_id)], args=[repr(time.time()), max_deliveries, error]
        )
        if outcome == "run":
            return Attempt(run=True, attempts=int(detail), status="running")
        if outcome == "lost":
            return Attempt(run=False, attempts=int(detail), status="failed", worker_lost=True)
        if outcome == "missing":
            raise JobNotFound(f"no job with id {job_id!r}", field="id")
        return Attempt(run=False, status=detail)

    def set_progress(self, job_id: str, stage: str, step: int = 0, total: int = 0) -> JobStatus | None:
        """Record progress while running; return the job's status (the worker stops on `canceling`)."""
        cur = self._progress(
            keys=[self.job_key(job_id)], args=[json.dumps({"stage": stage, "step": step, "total": total})]
        )
        return JobStatus(cur) if cur else None

    def succeed(self, job_id: str, result: dict[str, Any], timings: dict[str, float]) -> JobStatus:
        prog = {"stage": "done", "step": result.get("steps", 0), "total": result.get("steps", 0)}
        return self.transition(
            job_id, JobStatus.SUCCEEDED, finished_at=repr(time.time()), result=result, timings=timings, progress=prog
        )

    def fail(self, job_id: str, code: str, message: str, timings: dict[str, float] | None = None) -> JobStatus:
        fields: dict[str, Any] = {"finished_at": repr(time.time()), "error": {"code": code, "message": message}}
        if timings:
            fields["timings"] = timings
        return self.transition(job_id, JobStatus.FAILED, **fields)

    # --- service-time statistics and workers (for ETAs) -----------------------------------------
    def record_service_time(self, kind: str, seconds: float, keep: int = 50) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.lpush(self.stats_key(kind), f"{seconds:.3f}")
        pipe.ltrim(self.stats_key(kind), 0, keep - 1)
        pipe.execute()

    def mean_service_time(self, kind: str) -> float | None:
        values = [float(v) for v in self.r.lrange(self.stats_key(kind), 0, -1)]
        return sum(values) / len(values) if values else None

    def worker_heartbeat(self, queue: str, worker: str) -> None:
        self.r.zadd(self.workers_key(queue), {worker: time.time()})

    def worker_gone(self, queue: str, worker: str) -> None:
        self.r.zrem(self.workers_key(queue), worker)

    def live_workers(self, queue: str, within_s: float = 45.0) -> int:
        return int(self.r.zcount(self.workers_key(queue), time.time() - within_s, "+inf"))

    def _queue_of(self, job_id: str) -> str:
        # Jobs of every kind live on one queue per kind; the queue name is stored on the record.
        queue = self.r.hget(self.job_key(job_id), "queue") or "decompose"
        return self.queue_key(queue)
