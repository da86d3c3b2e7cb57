"""Who is asking. layerq has no user database: a caller's tenant is the hash of its bearer token
(any token the deployment's gateway lets through), or `public` without one. Jobs, batches, the
result cache and idempotency keys are all scoped to the tenant."""

from __future__ import annotations

import hashlib

from flask import g, request

PUBLIC = "public"


def tenant() -> str:
    key = g.get("layerq_key")  # LAYERQ_AUTH=keys (api/auth.py): the issued key's tenant
    if key is not None:
        return key.tenant
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer ") and auth[7:].strip():
        return "t" + hashlib.sha256(auth[7:].strip().encode()).hexdigest()[:24]
    return PUBLIC
