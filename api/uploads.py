"""Direct uploads: `POST /v1/uploads` hands out a presigned PUT (S3) or a signed API URL (local disk),
so large inputs go straight to storage and jobs or batches then name them by `input_key`."""

from __future__ import annotations

import time
import uuid

from flask import Blueprint, jsonify

from api.bodies import json_object, parse_model
from api.context import services
from api.tenancy import tenant
from api.views import absolute, iso
from layerq.errors import ValidationFailed
from layerq.requests import UPLOAD_PREFIX, UploadRequest

bp = Blueprint("uploads", __name__)


@bp.post("/v1/uploads")
def create_upload():
    svc = services()
    body = parse_model(UploadRequest, json_object(required=False))
    key = f"{UPLOAD_PREFIX}{uuid.uuid4().hex}/{body.filename}"
    ttl = svc.settings.url_ttl_s
    try:
        signed = svc.store.presign_put(key, ttl, body.content_type)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="content_type") from exc
    # Only the tenant that asked for this upload may run jobs on it (storage/uploads.py).
    svc.uploads.bind(key, tenant())
    return jsonify({"input_key": key, "url": absolute(signed["url"]), "method": signed["method"],
                    "headers": signed["headers"], "max_bytes": svc.settings.max_upload_bytes,
                    "expires_at": iso(time.time() + ttl)}), 201
