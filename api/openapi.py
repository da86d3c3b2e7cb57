"""The OpenAPI 3 document, generated from the same pydantic models that validate requests and shape
responses, so the document cannot drift from the code."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

import layerq
from layerq.jobs import JobView
from layerq.params import DecomposeParams

bp = Blueprint("openapi", __name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: str
    checks: dict[str, str]
    workers: int


MODELS: list[type[BaseModel]] = [DecomposeParams, JobView, ErrorResponse, Health]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request (the field is named)", 403: "Bad, expired or foreign signature",
            404: "Not found", 413: "Request body too large", 503: "Queue unavailable"}
    return {str(c): _json(ErrorResponse, text[c]) for c in codes}


def build_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "layerq", "version": layerq.__version__,
                 "description": "Decompose images into editable RGBA layers (Qwen-Image-Layered)."},
        "paths": {
            "/v1/jobs": {
                "post": {
                    "summary": "Submit a decomposition job",
                    "operationId": "submitJob",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "required": ["image"],
                                    "properties": {
                                        "image": {"type": "string", "format": "binary",
                                                  "description": "PNG, JPEG, WebP, BMP, TIFF or GIF"},
                                        "params": _ref(DecomposeParams),
                                    },
                                },
                                "encoding": {"params": {"contentType": "application/json"}},
                            }
                        },
                    },
                    "responses": {
                        "202": {**_json(JobView, "Accepted; poll the Location"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        **_errors(400, 413, 503),
                    },
                }
            },
            "/v1/jobs/{id}": {
                "get": {
                    "summary": "Read a job; result URLs are signed afresh on each read",
                    "operationId": "getJob",
                    "parameters": [job_id],
                    "responses": {"200": _json(JobView, "The job"), **_errors(400, 404)},
                }
            },
            "/files/{key}": {
                "get": {
                    "summary": "Download an object of the local-disk backend through a signed URL",
                    "operationId": "downloadFile",
                    "parameters": [
                        {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                        {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
                        {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "download", "in": "query", "required": False, "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "The object's bytes"}, **_errors(403, 404)},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness and dependencies", "operationId": "health",
                        "responses": {"200": _json(Health, "Healthy"), "503": _json(Health, "Degraded")}}
            },
            "/openapi.json": {
                "get": {"summary": "This document", "operationId": "openapi",
                        "responses": {"200": {"description": "OpenAPI 3.1 document"}}}
            },
        },
        "components": {"schemas": defs["$defs"]},
    }


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_document())
