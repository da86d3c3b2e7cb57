"""Reading JSON request bodies: a body that is present must be a JSON object sent as JSON, never
silently taken for an empty request."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from layerq.errors import ValidationFailed


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
