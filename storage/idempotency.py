"""Idempotency keys: a submission's fingerprint while it runs, then the response it got, for
`ttl_s` seconds. The first request claims its key with SET NX before doing any work."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from storage.keys import Keys


class IdempotencyStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s

    def _key(self, tenant: str, key: str) -> str:
        return self.keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())

    def claim(self, tenant: str, key: str, fingerprint: str) -> dict[str, Any] | None:
        """Claim `key` for a request with this fingerprint: None when claimed now, else what the
        earlier request with this key recorded (`{"fp", "state": "pending"|"done", ...}`)."""
        rkey = self._key(tenant, key)
        if self._r.set(rkey, json.dumps({"fp": fingerprint, "state": "pending"}), nx=True, ex=self.ttl_s):
            return None
        return json.loads(self._r.get(rkey) or "{}")

    def save(self, tenant: str, key: str, record: dict[str, Any]) -> None:
        """Remember the response of the request that claimed `key`."""
        self._r.set(self._key(tenant, key), json.dumps(record), ex=self.ttl_s)

    def release(self, tenant: str, key: str) -> None:
        """Forget `key` (nothing was created): the client may try again with it."""
        self._r.delete(self._key(tenant, key))
