"""Rate limits per caller and route (flask-limiter), kept in the deployment's Redis so they hold
across API processes and pods: `LAYERQ_RATE_LIMIT_SUBMIT` on the routes that create jobs (`POST
/v1/jobs`, `/v1/batches`, `/v1/edits` and `/v1/layersets/*`),
`LAYERQ_RATE_LIMIT_READ` on every other `/v1/` route, each route counted on its own. Empty: no limit.

The caller is the API key (keys mode), else the bearer token's tenant, else the client address.
Only the Redis URL is handed to flask-limiter (its `limits` package holds the connection), so no
module of `api/` speaks Redis; its counters live under `Keys.rate_limit_prefix`. Past a limit: 429
in the JSON error shape with `Retry-After` (seconds until the window resets). If Redis is out the
limiter lets requests through (the job store's own 503 answers them soon enough)."""

from __future__ import annotations

import math
import time

from flask import Flask, request
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded

from api.auth import current_key
from api.errors import error_response
from api.tenancy import PUBLIC, tenant
from layerq.config import Settings
from storage.keys import Keys

SUBMIT_ENDPOINTS = ("jobs.submit_job", "batches.submit_batch", "edits.submit_edit", "layersets.decompose_layer",
                    "layersets.compose_layers", "layersets.combine_layers")
"""Every route that creates jobs: each counts against `LAYERQ_RATE_LIMIT_SUBMIT` on its own."""


def caller() -> str:
    key = current_key()
    if key is not None:
        return f"key:{key.key_id}"
    who = tenant()
    return f"tenant:{who}" if who != PUBLIC else f"addr:{request.remote_addr}"


def register(app: Flask, settings: Settings) -> Limiter | None:
    if not (settings.rate_limit_submit or settings.rate_limit_read):
        return None
    limiter = Limiter(
        caller, app=app, storage_uri=settings.redis_url, key_prefix=Keys(settings.key_prefix).rate_limit_prefix,
        default_limits=[settings.rate_limit_read] if settings.rate_limit_read else [],
        default_limits_exempt_when=lambda: not request.path.startswith("/v1/"),
        strategy="moving-window", swallow_errors=True, headers_enabled=False,
    )
    for endpoint in SUBMIT_ENDPOINTS if settings.rate_limit_submit else ():
        # Wrapping here rather than decorating in jobs.py/batches.py keeps limits out of the routes:
        # flask-limiter checks a decorated view inside its wrapper, so the wrapper must be what Flask calls.
        view = app.view_functions[endpoint]
        app.view_functions[endpoint] = limiter.limit(settings.rate_limit_submit, override_defaults=True)(view)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded):
        current = limiter.current_limit
        wait = math.ceil(current.reset_at - time.time()) if current else 1
        resp, status = error_response("rate_limited", f"rate limit exceeded ({exc.description}); retry later", 429)
        resp.headers["Retry-After"] = str(max(1, wait))
        return resp, status

    return limiter
