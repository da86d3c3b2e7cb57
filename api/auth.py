"""Who may call the API. `LAYERQ_AUTH=open` (the default, and what `layerq up` runs on loopback):
any bearer token is a tenant of its own (api/tenancy.py). `LAYERQ_AUTH=keys`: every `/v1/` request
must carry `Authorization: Bearer <key>` with a key issued by `layerq keys create` and not revoked
(storage/apikeys.py); the tenant is the key's. A missing, unknown or revoked key is a 401 with
`WWW-Authenticate: Bearer` (RFC 6750), in the usual JSON error shape.

Routes outside `/v1/` stay open: probes, metrics, this document, the web page (which sends the key
the user enters), and `/files/…`, whose URLs carry their own signature."""

from __future__ import annotations

from flask import Flask, g, request

from api.errors import error_response
from layerq.config import Settings
from storage.apikeys import ApiKey, ApiKeyStore

AUTH_MODES = ("open", "keys")


def register(app: Flask, settings: Settings, keys: ApiKeyStore) -> None:
    if settings.auth not in AUTH_MODES:
        raise ValueError(f"LAYERQ_AUTH must be one of {', '.join(AUTH_MODES)}, not {settings.auth!r}")
    if settings.auth == "open":
        return

    @app.before_request
    def require_key():
        if not request.path.startswith("/v1/"):
            return None
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        record = keys.authenticate(token) if token else None
        if record is None:
            resp, status = error_response(
                "unauthorized", "an API key is required (Authorization: Bearer <key>)" if not token
                else "unknown or revoked API key", 401)
            # RFC 6750 §3: no error code when no credentials were sent.
            resp.headers["WWW-Authenticate"] = ('Bearer realm="layerq"' if not token
                                                else 'Bearer realm="layerq", error="invalid_token"')
            return resp, status
        g.layerq_key = record
        return None


def current_key() -> ApiKey | None:
    """The API key of this request (keys mode), else None."""
    return g.get("layerq_key")
