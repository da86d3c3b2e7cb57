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
from layerq.requests import BatchRequest, JobRequest, UploadRequest

bp = Blueprint("openapi", __name__)


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class CancelResult(BaseModel):
    job: JobView
    message: str
    changed: bool


class BatchAccepted(BaseModel):
    id: str
    count: int
    job_ids: list[str]
    cached: int


class DryRun(BaseModel):
    dry_run: bool
    count: int
    estimated_gpu_s: float
    queue_ahead_gpu_s: float
    workers: int
    estimated_completion_s: float
    estimated_completion_at: str


class JobPage(BaseModel):
    items: list[JobView]
    next_cursor: str | None


class BatchView(BaseModel):
    id: str
    count: int
    counts: dict[str, int]
    created_at: str
    progress: float
    eta_s: float | None
    jobs: JobPage


class BatchCancelResult(BaseModel):
    id: str
    canceled: int
    canceling: int
    already_finished: int
    missing: int


class UploadTicket(BaseModel):
    input_key: str
    url: str
    method: str
    headers: dict[str, str]
    max_bytes: int
    expires_at: str


class Health(BaseModel):
    status: str
    checks: dict[str, str]
    workers: int


MODELS: list[type[BaseModel]] = [
    DecomposeParams, JobView, ErrorResponse, Health, JobRequest, BatchRequest, UploadRequest, CancelResult,
    BatchAccepted, DryRun, JobPage, BatchView, BatchCancelResult, UploadTicket,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid request (the field is named)", 403: "Bad, expired or foreign signature",
            404: "Not found (another tenant's job, batch or upload reads the same)", 409: "Idempotency-Key reused with another request, or still in progress",
            413: "Request body too large", 503: "Queue unavailable"}
    return {str(c): _json(ErrorResponse, text[c]) for c in codes}


IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string",
               "maxLength": 255}, "description": "Same key and body: the first response again; other body: 409."}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}


# The local backend's signed URLs: the key in the path, expiry and signature in the query.
SIGNED_URL = [
    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
]


def _ref_status() -> dict[str, str]:
    return {"$ref": "#/components/schemas/JobStatus"}


def build_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    job_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "layerq", "version": layerq.__version__,
                 "description": "Decompose images into editable RGBA layers (Qwen-Image-Layered)."},
        "paths": {
            "/v1/jobs": {
                "get": {
                    "summary": "A batch's jobs in submission order, optionally of one status",
                    "operationId": "listJobs",
                    "parameters": [
                        {"name": "batch", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "status", "in": "query", "required": False, "schema": _ref_status()},
                        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    ],
                    "responses": {"200": _json(JobPage, "One page"), **_errors(400, 404)},
                },
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
                                        "webhook": {"type": "string", "description": "WebhookSpec as JSON"},
                                        "cache": {"type": "string", "enum": ["true", "false"]},
                                    },
                                },
                                "encoding": {"params": {"contentType": "application/json"}},
                            },
                            "application/json": {"schema": _ref(JobRequest)},
                        },
                    },
                    "parameters": [IDEMPOTENCY],
                    "responses": {
                        "202": {**_json(JobView, "Accepted; poll the Location"),
                                "headers": {"Location": {"schema": {"type": "string"}}}},
                        "200": _json(JobView, "Answered at once from an identical finished job (`cached_from`)"),
                        **_errors(400, 404, 409, 413, 503),
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
            "/v1/jobs/{id}/cancel": {
                "post": {
                    "summary": "Cancel a job: queued ones never start, running ones stop at the next step",
                    "operationId": "cancelJob",
                    "parameters": [job_id],
                    "responses": {"200": _json(CancelResult, "What happened (harmless when already finished)"),
                                  **_errors(400, 404)},
                }
            },
            "/v1/batches": {
                "post": {
                    "summary": "Submit up to 10,000 jobs, or estimate them with dry_run",
                    "operationId": "submitBatch",
                    "parameters": [IDEMPOTENCY],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref(BatchRequest)},
                        "multipart/form-data": {"schema": {"type": "object", "required": ["batch"], "properties": {
                            "batch": _ref(BatchRequest)}, "additionalProperties": {"type": "string", "format": "binary"}},
                            "encoding": {"batch": {"contentType": "application/json"}}},
                    }},
                    "responses": {"202": _json(BatchAccepted, "Accepted"), "200": _json(DryRun, "Dry run estimate"),
                                  **_errors(400, 404, 409, 413, 503)},
                }
            },
            "/v1/batches/{id}": {
                "get": {"summary": "Counts per status, progress, ETA and the first page of jobs", "operationId": "getBatch",
                        "parameters": [job_id], "responses": {"200": _json(BatchView, "The batch"), **_errors(400, 404)}}
            },
            "/v1/batches/{id}/cancel": {
                "post": {"summary": "Cancel every job of a batch", "operationId": "cancelBatch", "parameters": [job_id],
                         "responses": {"200": _json(BatchCancelResult, "Counts"), **_errors(400, 404)}}
            },
            "/v1/uploads": {
                "post": {"summary": "A URL to PUT one input to; jobs then name it by input_key", "operationId": "createUpload",
                         "requestBody": {"content": {"application/json": {"schema": _ref(UploadRequest)}}},
                         "responses": {"201": _json(UploadTicket, "Upload ticket"), **_errors(400)}}
            },
            "/files/{key}": {
                "get": {
                    "summary": "Download an object of the local-disk backend through a signed URL",
                    "operationId": "downloadFile",
                    "parameters": [*SIGNED_URL, _query("download")],
                    "responses": {"200": {"description": "The object's bytes"}, **_errors(403, 404)},
                },
                "put": {
                    "summary": "Upload an input through a URL from POST /v1/uploads (local-disk backend)",
                    "operationId": "uploadFile",
                    "parameters": [*SIGNED_URL, _query("content_type")],
                    "requestBody": {"required": True,
                                    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                         "format": "binary"}}}},
                    "responses": {"200": {"description": "Stored"}, **_errors(403, 404, 413)},
                },
            },
            "/healthz": {
                "get": {"summary": "Liveness and dependencies", "operationId": "health",
                        "responses": {"200": _json(Health, "Healthy"), "503": _json(Health, "Degraded")}}
            },
            "/livez": {
                "get": {"summary": "Liveness only (no dependency checks)", "operationId": "live",
                        "responses": {"200": {"description": "The process answers"}}}
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
