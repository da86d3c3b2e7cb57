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

    def beat(self, queues: list[str], worker: str, info: dict[str, Any] | None = None, ttl_s: int = 30) -> None:
        """One heartbeat on every queue `worker` consumes, and its description renewed, in one round trip."""
        now = time.time()
        pipe = self._r.pipeline(transaction=False)
        for queue in queues:
            pipe.zadd(self.keys.workers(queue), {worker: now})
        if info is not None:
            pipe.set(self.keys.worker_info(worker), json.dumps(info), ex=max(1, int(ttl_s)))
        pipe.execute()

    def gone(self, queue: str, worker: str) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.zrem(self.keys.workers(queue), worker)
        pipe.delete(self.keys.worker_info(worker))
        pipe.execute()

    def live_count(self, queue: str, within_s: float = 45.0) -> int:
        return int(self._r.zcount(self.keys.workers(queue), time.time() - within_s, "+inf"))

    def live_names(self, queues: tuple[str, ...] | list[str], within_s: float = 45.0) -> list[str]:
        """Workers that beat on any of `queues` within `within_s`, each once (a worker beats on every
        queue it consumes: a big-memory worker on its class's decompose queue and the smaller ones')."""
        pipe = self._r.pipeline(transaction=False)
        for queue in queues:
            pipe.zrangebyscore(self.keys.workers(queue), time.time() - within_s, "+inf")
        return sorted({name for names in pipe.execute() for name in names})

    def live_count_on(self, queues: tuple[str, ...] | list[str], within_s: float = 45.0) -> int:
        return len(self.live_names(queues, within_s))

    def descriptions(self, workers: list[str]) -> list[dict[str, Any]]:
        """What each worker published (`{}` for one that published nothing or expired)."""
        raw = self._r.mget([self.keys.worker_info(w) for w in workers]) if workers else []
        return [json.loads(r) if r else {} for r in raw]

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
        pipe.delete(self.keys.worker_info(worker))
        pipe.execute()

    def claim_reaping(self, dead: str, by: str, ttl_s: int = 60) -> bool:
        """One reaper per dead worker, even with many live workers watching."""
        return bool(self._r.set(self.keys.reaping(dead), by, nx=True, ex=ttl_s))

    def claim_unsent_sweep(self, by: str, ttl_s: int, queue: str = "") -> bool:
        """One worker at a time sends the jobs (of `queue`) the API recorded but never sent."""
        return bool(self._r.set(self.keys.sending_unsent(queue), by, nx=True, ex=ttl_s))
