"""Batch records: one hash per batch holding its settings and per-status counters (kept by the job
transition scripts), and a list of its job ids in submission order (for paging)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from layerq.errors import JobNotFound
from storage.jobs import JobStore, NewJob

STATUSES = ("queued", "running", "canceling", "succeeded", "failed", "canceled", "expired")


class BatchStore:
    def __init__(self, client: redis.Redis, jobs: JobStore) -> None:
        self._r = client
        self._jobs = jobs
        self.keys = jobs.keys

    def create(
        self, batch_id: str, jobs: list[NewJob], *, tenant: str, meta: dict[str, Any], all_ids: list[str],
        cached: list[tuple[str, dict[str, Any], dict[str, Any]]] = (),  # type: ignore[assignment]
        retain_s: int = 0,
    ) -> None:
        """Write the batch, its queued jobs and its jobs answered from the cache (`(job_id, params,
        source record)`) in one round trip (no Redis call per item). `all_ids` is every job of the
        batch in item order."""
        pipe = self._r.pipeline(transaction=False)
        key, ids_key = self.keys.batch(batch_id), self.keys.batch_jobs(batch_id)
        now = time.time()
        pipe.hset(key, mapping={"id": batch_id, "tenant": tenant, "count": len(all_ids),
                                "created_at": repr(now), "meta": json.dumps(meta), "n_queued": len(jobs)})
        self._jobs.index_by_creation(pipe, self.keys.tenant_batches(tenant), {batch_id: int(now * 1e6)}, now)
        for i in range(0, len(all_ids), 5000):
            pipe.rpush(ids_key, *all_ids[i : i + 5000])
        for k in (key, ids_key):
            # A batch lives as long as its jobs may: unfinished ones `ttl_s`, finished ones `retain_s`.
            pipe.expire(k, max(self._jobs.ttl_s, retain_s))
        self._jobs.create_many(jobs, pipe=pipe)
        for job_id, params, source in cached:
            self._jobs.create_cached(job_id, params=params, source=source, tenant=tenant, batch_id=batch_id,
                                     webhook=meta.get("webhook"), pipe=pipe, retain_s=retain_s)
        pipe.execute()

    def get(self, batch_id: str) -> dict[str, Any]:
        raw = self._r.hgetall(self.keys.batch(batch_id))
        if not raw:
            raise JobNotFound(f"no batch with id {batch_id!r}", field="id")
        return _parsed(raw)

    def get_many(self, batch_ids: list[str]) -> list[dict[str, Any] | None]:
        """Batches in one round trip, in order; None where a record expired."""
        pipe = self._r.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.hgetall(self.keys.batch(batch_id))
        # Without `id`: the record expired and a late job transition's counter made a stub.
        return [_parsed(raw) if raw.get("id") else None for raw in pipe.execute()]

    def tenant_batch_ids(self, tenant: str, before_us: int | None, count: int) -> list[tuple[str, int]]:
        """A tenant's batches, newest first (`JobStore.newest_ids`)."""
        return self._jobs.newest_ids(self.keys.tenant_batches(tenant), before_us, count)

    def job_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        return self._r.lrange(self.keys.batch_jobs(batch_id), start, stop)


def _parsed(raw: dict[str, str]) -> dict[str, Any]:
    counts = {s: max(0, int(raw.get(f"n_{s}", 0))) for s in STATUSES}
    return {"id": raw["id"], "tenant": raw.get("tenant", ""), "count": int(raw["count"]),
            "created_at": float(raw["created_at"]), "meta": json.loads(raw.get("meta") or "{}"),
            "counts": counts}
