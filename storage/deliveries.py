"""Webhook deliveries: one hash per (job, event) delivery, claimed once (the dedupe that makes a
redelivered job send no second event), and the list of its attempts. Lives as long as job records."""

from __future__ import annotations

import json
from typing import Any

import redis

from storage.keys import Keys


class WebhookDeliveries:
    def __init__(self, client: redis.Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s

    def claim(self, delivery_id: str, *, job_id: str, event: str, url: str) -> bool:
        """Record a queued delivery; False when this delivery was claimed before (one per job and event, ever)."""
        key = self.keys.webhook(delivery_id)
        if not self._r.hsetnx(key, "state", "queued"):
            return False
        pipe = self._r.pipeline(transaction=False)  # one round trip; the hsetnx above already claimed the key
        pipe.hset(key, mapping={"job_id": job_id, "event": event, "url": url, "attempts": 0})
        pipe.expire(key, self.ttl_s)
        pipe.execute()
        return True

    def release(self, delivery_id: str) -> None:
        """Forget a claim whose message could not be queued, so a later redelivery of the job tries again."""
        self._r.delete(self.keys.webhook(delivery_id))

    def progress(self, delivery_id: str) -> tuple[str | None, int]:
        """(state, attempts made) of one delivery."""
        state, done = self._r.hmget(self.keys.webhook(delivery_id), "state", "attempts")
        return state, int(done or 0)

    def record(self, delivery_id: str, summary: dict[str, Any], attempt: dict[str, Any]) -> None:
        """Record one attempt: the delivery's new summary and the attempt appended to its history."""
        key, history = self.keys.webhook(delivery_id), self.keys.webhook_attempts(delivery_id)
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(key, mapping=summary)
        pipe.rpush(history, json.dumps(attempt))
        pipe.expire(key, self.ttl_s)
        pipe.expire(history, self.ttl_s)
        pipe.execute()

    def status(self, delivery_id: str) -> dict[str, Any] | None:
        """The summary and every attempt of one delivery (for the API or an operator), or None."""
        summary = self._r.hgetall(self.keys.webhook(delivery_id))
        if not summary:
            return None
        return {**summary, "id": delivery_id, "attempts": int(summary.get("attempts") or 0),
                "history": [json.loads(e) for e in self._r.lrange(self.keys.webhook_attempts(delivery_id), 0, -1)]}
