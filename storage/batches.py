"""Batch records: one hash per batch holding its settings and per-status counters (kept by the job
transition scripts), and a list of its job ids in submission order (for paging)."""

from __future__ import annotations

import json
import time
from typing import Any

from layerq.errors import JobNotFound
from storage.jobs import JobStore, NewJob

STATUSES = ("queued", "running", "canceling", "succeeded", "failed", "canceled")


class BatchStore:
    def __init__(self, jobs: JobStore) -> None:
        self.jobs = jobs
        self.r = jobs.r

    def key(self, batch_id: str) -> str:
        return f"{self.jobs.batch_prefix}{batch_id}"

    def create(
        self, batch_id: str, jobs: list[NewJob], *, tenant: str, meta: dict[str, Any], all_ids: list[str]
    ) -> None:
        """Write the batch and its queued jobs in one round trip (no Redis call per item). `all_ids`
        is every job of the batch in item order, including those answered from the cache."""
        pipe = self.r.pipeline(transaction=False)
        key = self.key(batch_id)
        pipe.hset(key, mapping={"id": batch_id, "tenant": tenant, "count": len(all_ids),
                                "created_at": repr(time.time()), "meta": json.dumps(meta), "n_queued": len(jobs)})
        ids = all_ids
        for i in range(0, len(ids), 5000):
            pipe.rpush(key + ":jobs", *ids[i : i + 5000])
        for k in (key, key + ":jobs"):
            pipe.expire(k, self.jobs.ttl_s)
        self.jobs.create_many(jobs, pipe=pipe)
        pipe.execute()

    def get(self, batch_id: str) -> dict[str, Any]:
        raw = self.r.hgetall(self.key(batch_id))
        if not raw:
            raise JobNotFound(f"no batch with id {batch_id!r}", field="id")
        counts = {s: max(0, int(raw.get(f"n_{s}", 0))) for s in STATUSES}
        return {"id": raw["id"], "tenant": raw.get("tenant", ""), "count": int(raw["count"]),
                "created_at": float(raw["created_at"]), "meta": json.loads(raw.get("meta") or "{}"),
                "counts": counts}

    def job_ids(self, batch_id: str, start: int = 0, stop: int = -1) -> list[str]:
        return self.r.lrange(self.key(batch_id) + ":jobs", start, stop)
