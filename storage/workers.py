"""The worker registry: heartbeats (who is alive, for ETAs, /healthz, duplicate detection in
`JobStore.begin_attempt`), the message each worker holds, and the locks that let one live worker
reap a dead one or sweep the unsent jobs. The policy (when to beat, whom to reap) is
`worker/liveness.py`; this module only keeps the records."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import redis

from storage.keys import Keys

if TYPE_CHECKING:
    from storage.client import RedisOptions


class WorkerRegistry:
    def __init__(self, client: redis.Redis, *, key_prefix: str) -> None:
        self._r = client
        self.keys = Keys(key_prefix)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str, options: "RedisOptions | None" = None) -> "WorkerRegistry":
        """A registry on its own client, for a launcher that watches workers it started. `options`
        name the master behind a `sentinel://` URL (`storage.client.options_of(settings)`)."""
        from storage.client import connect

        return cls(connect(url, options), key_prefix=key_prefix)

    def heartbeat(self, queue: str, worker: str, info: dict[str, Any] | None = None) -> None:
        """Record a beat; `info` (what the worker publishes about itself, e.g. its memory plan) is kept
        beside it for as long as the worker is registered."""
        if info:
            pipe = self._r.pipeline(transaction=False)
            pipe.zadd(self.keys.workers(queue), {worker: time.time()})
            pipe.hset(self.keys.worker_info(queue), worker, json.dumps(info, sort_keys=True))
            pipe.execute()
        else:
            self._r.zadd(self.keys.workers(queue), {worker: time.time()})

    def gone(self, queue: str, worker: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.zrem(self.keys.workers(queue), worker)
        pipe.hdel(self.keys.worker_info(queue), worker)
        pipe.execute()

    def live_details(self, queue: str, within_s: float = 45.0) -> list[dict[str, Any]]:
        """The live workers of `queue`, each `{"name": ..., **what it published}` (sorted by name)."""
        names = sorted(self._r.zrangebyscore(self.keys.workers(queue), time.time() - within_s, "+inf"))
        if not names:
            return []
        published = self._r.hmget(self.keys.worker_info(queue), names)
        return [{"name": name, **(json.loads(raw) if raw else {})} for name, raw in zip(names, published)]

    def live_count(self, queue: str, within_s: float = 45.0) -> int:
        return int(self._r.zcount(self.keys.workers(queue), time.time() - within_s, "+inf"))

    def names(self, queue: str) -> list[str]:
        """Every registered worker of `queue`, alive or not yet reaped."""
        return self._r.zrange(self.keys.workers(queue), 0, -1)

    def silent_since(self, queue: str, cutoff: float) -> list[str]:
        """Workers whose last beat is at or before `cutoff` (unix seconds)."""
        return self._r.zrangebyscore(self.keys.workers(queue), 0, cutoff)

    def hold(self, queue: str, worker: str, job_id: str, delivery_tag: str | None) -> None:
        """Record the message `worker` is running (for reaping if the worker dies)."""
        self._r.hset(self.keys.holding(queue, worker), mapping={"job_id": job_id, "delivery_tag": delivery_tag or ""})

    def release(self, queue: str, worker: str) -> None:
        self._r.delete(self.keys.holding(queue, worker))

    def held_by(self, queue: str, worker: str) -> dict[str, str]:
        return self._r.hgetall(self.keys.holding(queue, worker))

    def forget(self, queue: str, worker: str) -> None:
        """Drop a dead worker's records."""
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(self.keys.holding(queue, worker))
        pipe.zrem(self.keys.workers(queue), worker)
        pipe.hdel(self.keys.worker_info(queue), worker)
        pipe.execute()

    def claim_reaping(self, dead: str, by: str, ttl_s: int = 60) -> bool:
        """One reaper per dead worker, even with many live workers watching."""
        return bool(self._r.set(self.keys.reaping(dead), by, nx=True, ex=ttl_s))

    def claim_unsent_sweep(self, by: str, ttl_s: int) -> bool:
        """One worker at a time sends the jobs the API recorded but never sent."""
        return bool(self._r.set(self.keys.sending_unsent(), by, nx=True, ex=ttl_s))
