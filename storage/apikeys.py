"""API keys an operator issues and revokes (`layerq keys ...`), checked by the API under
`LAYERQ_AUTH=keys`.

A key is `lq_<key id>_<secret>`: the id (12 hex characters) finds the record in one HGETALL, the
secret is 32 random bytes (256 bits). Only the SHA-256 of the whole key is stored: with that much
entropy a plain hash cannot be brute-forced, so no pepper or slow hash is needed (a pepper protects
low-entropy secrets such as passwords), and the check costs one hash per request. The key itself is
shown once, by `layerq keys create`, and is never stored or logged. A revoked key's record stays
(with `revoked_at`), so `layerq keys list` shows what was issued and the id is never reused.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

import redis

from layerq.errors import ValidationFailed
from storage.client import connect
from storage.keys import Keys

KEY_RE = re.compile(r"^lq_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    created_at: float
    revoked_at: float | None = None
    name: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    def __init__(self, client: redis.Redis, *, key_prefix: str) -> None:
        self._r = client
        self.keys = Keys(key_prefix)

    @classmethod
    def from_url(cls, url: str, *, key_prefix: str) -> "ApiKeyStore":
        """For `layerq keys`: only Redis is needed, not the object store's settings."""
        return cls(connect(url), key_prefix=key_prefix)

    def create(self, tenant: str, name: str = "") -> tuple[ApiKey, str]:
        """Issue a key for `tenant`; return its record and the key (the only time it is seen)."""
        if not TENANT_RE.match(tenant):
            raise ValidationFailed("tenant: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                                   field="tenant")
        key_id = secrets.token_hex(6)
        key = f"lq_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKey(key_id=key_id, tenant=tenant, created_at=time.time(), name=name)
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self.keys.api_key(key_id), mapping={
            "tenant": tenant, "sha256": digest(key), "created_at": repr(record.created_at), "name": name})
        pipe.sadd(self.keys.api_keys(), key_id)
        pipe.execute()
        return record, key

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key's record, or None for a malformed, unknown or revoked key."""
        match = KEY_RE.match(key)
        if not match:
            return None
        raw = self._r.hgetall(self.keys.api_key(match.group(1)))
        if not raw or not hmac.compare_digest(raw.get("sha256", ""), digest(key)):
            return None
        record = _record(match.group(1), raw)
        return record if record.active else None

    def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke a key (at once, for every API process); None when no such key was issued."""
        key = self.keys.api_key(key_id)
        if not self._r.exists(key):
            return None
        self._r.hsetnx(key, "revoked_at", repr(time.time()))
        return _record(key_id, self._r.hgetall(key))

    def list(self) -> list[ApiKey]:
        ids = sorted(self._r.smembers(self.keys.api_keys()))
        pipe = self._r.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(self.keys.api_key(key_id))
        out = [_record(key_id, raw) for key_id, raw in zip(ids, pipe.execute()) if raw]
        return sorted(out, key=lambda k: k.created_at)


def _record(key_id: str, raw: dict[str, str]) -> ApiKey:
    revoked = raw.get("revoked_at")
    return ApiKey(key_id=key_id, tenant=raw.get("tenant", ""), created_at=float(raw.get("created_at") or 0),
                  revoked_at=float(revoked) if revoked else None, name=raw.get("name", ""))
