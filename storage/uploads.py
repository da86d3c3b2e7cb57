"""Which tenant asked for each upload. `POST /v1/uploads` binds `uploads/<id>/...` to its caller; a
job naming another tenant's upload (or one never handed out) is told the input does not exist."""

from __future__ import annotations

import redis

from storage.keys import Keys


def upload_id(input_key: str) -> str:
    """`uploads/<id>/<name>` → `<id>` (keys are checked for that shape before they get here)."""
    return input_key.split("/")[1]


class UploadStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str, ttl_s: int) -> None:
        self._r = client
        self.keys = Keys(key_prefix)
        self.ttl_s = ttl_s

    def bind(self, input_key: str, tenant: str) -> None:
        self._r.set(self.keys.upload(upload_id(input_key)), tenant, ex=self.ttl_s)

    def owners(self, input_keys: list[str]) -> list[str | None]:
        """The tenant of each upload (None when unknown or expired), in one round trip."""
        if not input_keys:
            return []
        return self._r.mget([self.keys.upload(upload_id(k)) for k in input_keys])
