"""The result cache: same tenant, same input bytes, same parameters (seed included), same model →
the finished job that already answered it. An entry lives as long as the job it points to."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from storage.jobs import JobStore


class ResultCache:
    def __init__(self, client: redis.Redis, jobs: JobStore) -> None:
        self._r = client
        self._jobs = jobs
        self.keys = jobs.keys

    def key_for(self, tenant: str, input_digest: str, params: dict[str, Any], model: str) -> str:
        """The cache key of a request; stored on the job (`cache_key`) so the worker can index it."""
        canon = json.dumps({"params": params, "model": model}, sort_keys=True)
        h = hashlib.sha256(f"{tenant}\n{input_digest}\n{canon}".encode()).hexdigest()
        return self.keys.cache(tenant, h)

    def lookup(self, key: str, tenant: str) -> dict[str, Any] | None:
        """The finished job that answers `key`, if its record (and so its retention) is still alive."""
        job_id = self._r.get(key)
        if not job_id:
            return None
        rec = self._jobs.get_many([job_id])[0]
        if not rec or rec.get("status") != "succeeded" or rec.get("tenant", "") != tenant:
            return None
        return rec

    def remember(self, job_id: str) -> None:
        """Let identical later requests be answered by this (succeeded) job, for as long as it lives."""
        key = self._jobs.cache_key_of(job_id)
        if key:
            self._r.set(key, job_id, ex=self._jobs.remaining_ttl_s(job_id))
