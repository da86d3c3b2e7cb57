"""Request checks that hold for every route, so routes added later get them too:

- a request target longer than `MAX_URI_BYTES` is a JSON 414 (gunicorn's own limit is lifted);
- a multipart body whose parts have no usable name is a malformed request (400), not a `None`
  form key for the views and the idempotency fingerprint to trip over."""

from __future__ import annotations

from flask import Flask, request

from layerq.errors import LayerqError, ValidationFailed

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_URI_BYTES = 8190  # gunicorn's default request-line limit, and nginx's default buffer


class UriTooLong(LayerqError):
    code = "uri_too_long"


def check_uri_length() -> None:
    target = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.full_path
    if len(target) > MAX_URI_BYTES:
        raise UriTooLong(f"the request target is longer than {MAX_URI_BYTES} bytes")


def check_multipart_part_names() -> None:
    """Every part of a multipart body must carry a non-empty `name` (RFC 7578 §4.2). Werkzeug
    files a part without one (or with one it cannot decode) under the key `None`."""
    if request.method not in BODY_METHODS or request.mimetype != "multipart/form-data":
        return  # GETs are never parsed: their bodies are ignored, as everywhere
    for key in (*request.form.keys(), *request.files.keys()):
        if not isinstance(key, str) or not key:
            raise ValidationFailed("every multipart part needs a non-empty name in its Content-Disposition",
                                   field="body")


def register(app: Flask) -> None:
    app.before_request(check_uri_length)
    app.before_request(check_multipart_part_names)
