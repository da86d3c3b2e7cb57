"""The one place where layerq errors become HTTP responses: `{"error": {"code", "message", "field"?}}`."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from api import contract
from layerq import errors as e
from storage.client import STORE_DOWN

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[e.LayerqError], int] = {
    contract.UriTooLong: 414,
    e.PayloadTooLarge: 413,
    e.ValidationFailed: 400,
    e.JobNotFound: 404,
    e.ObjectNotFound: 404,
    e.SignatureInvalid: 403,
    e.IllegalTransition: 409,
    e.QueueUnavailable: 503,
    e.NotReplicated: 503,
    e.IdempotencyConflict: 409,
    e.StorageFull: 507,  # Insufficient Storage (RFC 4918): the request was fine, the server is full
    e.TransientError: 503,  # object storage unreachable or faulting (S3 5xx, a disk's EIO): retry later
}


def error_response(code: str, message: str, status: int, field: str | None = None):
    body: dict = {"code": code, "message": message}
    if field:
        body["field"] = field
    return jsonify({"error": body}), status


def status_for(exc: e.LayerqError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def validation_failed(exc: ValidationError, prefix: str = "") -> e.ValidationFailed:
    """The first pydantic error as a ValidationFailed naming the field (`params.layers`)."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    field = f"{prefix}.{loc}" if prefix and loc else (loc or prefix or "body")
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    return e.ValidationFailed(f"{field}: {msg}" if field else msg, field=field)


def register(app: Flask) -> None:
    @app.errorhandler(e.LayerqError)
    def _layerq(exc: e.LayerqError):
        status = status_for(exc)
        if status == 500:  # a LayerqError with no HTTP meaning reached the API: a bug, keep the trace
            log.exception("internal error")
        elif status >= 500:
            # An expected answer (the queue or object store is out, a write not yet replicated, the
            # disk full): a warning line is enough; a traceback per request would bury real bugs.
            log.warning("%s %s: %s (%s)", status, exc.code, exc.message, request.path)
        resp, status = error_response(exc.code, exc.message, status, exc.field)
        if status == 503:  # the queue or the object store is out for now: say when to come back
            resp.headers["Retry-After"] = "5"
        return resp, status

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return error_response("payload_too_large", f"request body exceeds {limit} bytes", 413)

    @app.errorhandler(MethodNotAllowed)
    def _method(exc: MethodNotAllowed):
        # RFC 9110 §15.5.6: a 405 lists the methods the resource does support.
        resp, status = error_response("method_not_allowed", exc.description or exc.name, 405)
        resp.headers["Allow"] = ", ".join(sorted(exc.valid_methods or ()))
        return resp, status

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(exc.name.lower().replace(" ", "_"), exc.description or exc.name, exc.code or 500)

    def _redis_down(exc: Exception):
        # The job store is out (the client already retried with backoff): a retryable 503, not a 500.
        log.warning("redis unavailable: %s", exc)
        resp, status = error_response("unavailable", "the job store is unavailable; try again", 503)
        resp.headers["Retry-After"] = "5"
        return resp, status

    for fault in STORE_DOWN:
        app.register_error_handler(fault, _redis_down)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response("internal", "internal server error", 500)
