"""Idempotency keys: a submission's fingerprint while it runs, then the response it got, for
`ttl_s` seconds. The first request claims its key with SET NX before doing any work."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

import redis

from storage.keys import Keys


PENDING_TTL_S = 600
"""Longest a claim may stay pending; a submission answers well within it (its body has arrived)."""


class IdempotencyStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s

    def _key(self, tenant: str, key: str) -> str:
        return self.keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())

    def claim(self, tenant: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        """Claim `key` for a request with this fingerprint: None when claimed now, else what the
        earlier request with this key recorded (`{"fp", "state": "pending"|"done", ...}`).

        The claim carries a token of its own: when the client retries the SET after a connection
        reset (storage/client.py) and finds it already done, it is this request's claim, not an
        earlier one's. A pending claim lives `PENDING_TTL_S`, not the full TTL, so a claim whose
        request never answered (an API process killed, or the final record lost in a Redis failover:
        docs/redis-ha.md) blocks its key for minutes, not days."""
        rkey = self._key(tenant, key)
        token = secrets.token_hex(8)
        pending = json.dumps({"fp": fingerprint, "state": "pending", "claim": token})
        if self._r.set(rkey, pending, nx=True, ex=min(self.ttl_s, PENDING_TTL_S)):
            return None
        earlier = json.loads(self._r.get(rkey) or "{}")
        return None if earlier.get("claim") == token else earlier

    def save(self, tenant: str, key: str, record: dict[str, Any]) -> None:
        """Remember the response of the request that claimed `key`."""
        self._r.set(self._key(tenant, key), json.dumps(record), ex=self.ttl_s)

    def release(self, tenant: str, key: str) -> None:
        """Forget `key` (nothing was created): the client may try again with it."""
        self._r.delete(self._key(tenant, key))
