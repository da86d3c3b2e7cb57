"""`Idempotency-Key` on submissions: the same key with the same body replays the original response;
the same key with a different body is a 409. Keys live `idempotency_ttl_s` (48 h by default).

The first request claims the key with SET NX before doing any work, so two concurrent requests with
one key can never both create jobs: the second gets a 409 until the first has answered."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from flask import Response, request

from api.context import services
from api.tenancy import tenant
from layerq.errors import IdempotencyConflict, ValidationFailed

HEADER = "Idempotency-Key"


def fingerprint() -> str:
    """A hash of what the request asks for (path, JSON body or multipart fields and files)."""
    h = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    if request.mimetype.startswith("multipart/form-data"):
        for name in sorted(request.form, key=str):
            h.update(f"form:{name}={request.form.getlist(name)}\n".encode())
        for name in sorted(request.files, key=str):
            for f in request.files.getlist(name):
                h.update(f"file:{name}:{f.filename}:".encode() + hashlib.sha256(f.read()).digest())
                f.seek(0)
    else:
        h.update(request.get_data(cache=True))
    return h.hexdigest()


def idempotent(view: Callable[..., Response]) -> Callable[..., Response]:
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        if not 1 <= len(key) <= 255:
            raise ValidationFailed("Idempotency-Key must be 1 to 255 characters", field=HEADER)
        keys, who, fp = services().idempotency, tenant(), fingerprint()
        earlier = keys.claim(who, key, fp)
        if earlier is not None:
            return _replay(earlier, fp)
        try:
            resp = view(*args, **kwargs)
        except BaseException:
            keys.release(who, key)  # nothing was created: let the client try again with this key
            raise
        if 200 <= resp.status_code < 300:
            keys.save(who, key, {"fp": fp, "state": "done", "status": resp.status_code,
                                 "body": resp.get_data(as_text=True), "location": resp.headers.get("Location")})
        else:
            keys.release(who, key)
        return resp

    return wrapper


def _replay(saved: dict[str, Any], fp: str) -> Response:
    if saved.get("fp") != fp:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request", field=HEADER)
    if saved.get("state") != "done":
        raise IdempotencyConflict("a request with this Idempotency-Key is still being processed", field=HEADER)
    resp = Response(saved["body"], status=saved["status"], mimetype="application/json")
    if saved.get("location"):
        resp.headers["Location"] = saved["location"]
    resp.headers["Idempotent-Replayed"] = "true"
    return resp
