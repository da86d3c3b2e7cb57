"""Which layer set each job was made from, and which jobs were made from it.

A recursive decomposition, a compose job or an edit names a parent: a finished job, and for a
decomposition the layer it decomposes. The parent is written with the child's record (one pipeline)
and the child's id is appended to the parent's list of children, so `GET /v1/jobs/{id}` shows both
directions. Both keys live as long as job records (`LAYERQ_JOB_TTL_S`); the children list's expiry
is renewed on each append, so it never ends before its youngest child's record.

A parent answered from the result cache (`cached_from`) owns no objects: its layer keys point into
the source job's prefix. A child made from it is then also listed among the source's *readers*, so
the reaper (storage/retention.py) holds the source's objects back while that child is unfinished.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from storage.keys import Keys


class Lineage:
    def __init__(self, client: redis.Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s

    def pipeline(self) -> redis.client.Pipeline:
        """A pipeline (no transaction) on this store's client, for several links in one round trip."""
        return self._r.pipeline(transaction=False)

    def link(self, child_id: str, parent_id: str, layer: int | None = None,
             pipe: redis.client.Pipeline | None = None, owner_id: str = "") -> None:
        """Record `child_id` as made from `parent_id` (its layer `layer`, when one layer was used).
        `owner_id`: the job whose objects the parent's layers are (its `cached_from`, if any)."""
        p = pipe if pipe is not None else self._r.pipeline(transaction=False)
        p.set(self.keys.parent(child_id), json.dumps({"job_id": parent_id, "layer": layer}), ex=self.ttl_s)
        p.rpush(self.keys.children(parent_id), child_id)
        p.expire(self.keys.children(parent_id), self.ttl_s)
        if owner_id and owner_id != parent_id:
            # An unfinished child lives at most `ttl_s`; the list is renewed on each append.
            p.rpush(self.keys.readers(owner_id), child_id)
            p.expire(self.keys.readers(owner_id), self.ttl_s)
        if pipe is None:
            p.execute()

    def parent(self, job_id: str) -> dict[str, Any] | None:
        raw = self._r.get(self.keys.parent(job_id))
        return json.loads(raw) if raw else None

    def of(self, job_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """(parent, children) of a job in one round trip."""
        p = self._r.pipeline(transaction=False)
        p.get(self.keys.parent(job_id))
        p.lrange(self.keys.children(job_id), 0, -1)
        raw, children = p.execute()
        return (json.loads(raw) if raw else None), list(children)
