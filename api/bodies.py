"""Request bodies parsed one way: pydantic errors become a ValidationFailed naming the field, and
malformed JSON names the part it came from (`body`, or a multipart field such as `params`). A body
that is present must be what the route reads, never silently taken for an empty request."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import validation_failed
from layerq.errors import ValidationFailed
from layerq.params import DecomposeParams

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    """`data` validated as `model`; field names in errors start with `prefix` when given."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, prefix=prefix) from exc


def json_body(model: type[M]) -> M:
    """The request's JSON body as `model` (whatever its Content-Type says)."""
    try:
        data = request.get_json(force=True, silent=False)
    except Exception as exc:  # malformed JSON
        raise ValidationFailed(f"body is not valid JSON: {exc}", field="body") from exc
    return parse_model(model, data)


def json_field(raw: str | None, field: str) -> Any:
    """A multipart field holding JSON; absent or blank is `{}`."""
    if raw is None or raw.strip() == "":
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"{field} is not valid JSON: {exc.msg}", field=field) from exc


def parse_params(data: Any, field: str = "params") -> DecomposeParams:
    if not isinstance(data, dict):
        raise ValidationFailed(f"{field} must be a JSON object", field=field)
    return parse_model(DecomposeParams, data, prefix=field)


def json_object(*, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object. An empty body is `{}` when the body is optional."""
    raw = request.get_data(cache=True)
    if not raw and not required:
        return {}
    if not request.is_json:
        raise ValidationFailed("send the body as application/json", field="body")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidationFailed(f"body is not valid JSON: {exc}", field="body") from exc
    if not isinstance(data, dict):
        raise ValidationFailed("body must be a JSON object", field="body")
    return data
