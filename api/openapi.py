"""The OpenAPI 3 document, generated from the same pydantic models that validate requests and shape
responses, so the document cannot drift from the code."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

import layerq
from api.form import FLAG_PATTERN, RETAIN_PATTERN
from api.ids import ID_PATTERN
from api.paging import CURSOR_PATTERN, PAGE_DEFAULT, PAGE_MAX
from api import layersets_doc
from layerq.edits import EditParams, EditRequest
from layerq.jobs import JobStatus, JobView
from layerq.layersets import CombineRequest, ComposeRequest, LayerDecomposeRequest
from layerq.scheduling import CANCEL_AFTER_DOC, MAX_CANCEL_AFTER_S, PRIORITIES, PRIORITY_DOC
from layerq.params import DecomposeParams
from layerq.requests import BatchRequest, JobRequest, UploadRequest
from layerq.webhooks import WebhookSpec

bp = Blueprint("openapi", __name__)

SCHEDULE_FIELDS = {
    "priority": {"type": "string", "enum": list(PRIORITIES), "description": PRIORITY_DOC},
    "cancel_after_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CANCEL_AFTER_S,
                       "description": CANCEL_AFTER_DOC},
    "retain_s": {"type": "string", "pattern": RETAIN_PATTERN,
                 "description": "Seconds results are kept once the job ends"},
}
"""The multipart form fields of a single-job submission that schedule it (layerq/scheduling.py) and
say how long its results live (storage/retention.py)."""


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


class BatchSummary(BaseModel):
    id: str
    kind: str = Field(description="`decompose` or `edit`: the kind of every job of the batch")
    count: int
    counts: dict[str, int]
    created_at: str
    progress: float = Field(description="Share of the batch's jobs that ended (read the batch for running "
                            "jobs' steps and its ETA)")
    done: bool = Field(description="Every job of the batch ended")


class BatchPage(BaseModel):
    items: list[BatchSummary]
    next_cursor: str | None


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


class LiveWorker(BaseModel):
    """A GPU worker as its last heartbeat describes it (more fields may follow)."""

    model_config = ConfigDict(extra="allow")
    name: str
    kind: str | None = None
    queues: list[str] = []
    memory_class: str | None = Field(None, description="GPU memory class (80, 48, 24, 16) of a decompose worker.")
    memory_budget_gib: float | None = Field(None, description="GPU memory the worker may use; null: not limited.")
    memory_plan: dict[str, Any] | None = Field(
        None, description="The worker's memory plan (worker/memory_plan.py `MemoryPlan.describe()`): name, "
        "budget_gib, resident_blocks, streamed_blocks, text_encoder, captions (auto-captions: batched 8 at a "
        "time, batch-invariant, their KV buffers' GiB, text layers resident while prefilling and decoding), "
        "vae_tiling, pinned_host_gib, "
        "fp8_fast_quality and fast_jobs (what a quality=fast job gets: weights, blocks resident and streamed, "
        "the FP8 copy's size and where it lives, or why fast jobs keep bf16), ...")


class Health(BaseModel):
    status: str
    checks: dict[str, str]
    workers: int = Field(description="Live decompose workers, all memory classes (what readiness probes and "
                         "`layerq up` read).")
    workers_by_queue: dict[str, int] = Field(
        description="Live workers per kind: `decompose` (all memory classes), `edit` (GPU) and `cpu` (compose, "
        "combine, webhooks).")
    memory_classes: list[str] = Field(description="The fleet's configured memory classes (LAYERQ_MEMORY_CLASSES).")
    live_workers: list[LiveWorker]


MODELS: list[type[BaseModel]] = [
    DecomposeParams, JobView, ErrorResponse, Health, JobRequest, BatchRequest, UploadRequest, CancelResult,
    BatchAccepted, DryRun, JobPage, BatchView, BatchSummary, BatchPage, BatchCancelResult, UploadTicket,
    EditParams, EditRequest, LayerDecomposeRequest, ComposeRequest, CombineRequest,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


ERROR_TEXT = {
    400: "Invalid request (the field is named)", 403: "Bad, expired or foreign signature",
    404: "Not found (another tenant's job, batch or upload reads the same)", 409: "Idempotency-Key reused with another request, or still in progress",
    413: "Request body too large", 414: "Request target (path and query) too long",
    503: "Job store or queue unavailable; retry later",
    401: "No, unknown or revoked API key (only with LAYERQ_AUTH=keys); see WWW-Authenticate",
    429: "Rate limit of this caller and route exceeded; retry after Retry-After seconds",
}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(ErrorResponse, ERROR_TEXT[c]) for c in codes}


# Every operation that reads or writes the job store can answer 503 while Redis is out.
READ = (400, 404, 503)
SUBMIT = (400, 404, 409, 413, 503)  # 404: an `input_key` upload of another tenant

IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "minLength": 1, "maxLength": 255},
               "description": "Same key and body: the first response again; other body: 409."}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}


def _id_param(description: str) -> dict[str, Any]:
    return {"name": "id", "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": ID_PATTERN}}


# The local backend's signed URLs: the key in the path, expiry and signature in the query.
SIGNED_URL = [
    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "expires", "in": "query", "required": True, "schema": {"type": "integer"}},
    {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}},
]

# What the routes check beyond a field's own type; the schemas say it so that clients (and fuzzers)
# generated from this document know it.
UPLOAD_KEY = {"type": "string", "maxLength": 300, "pattern": r"^uploads/[^/]+/[^/]+$",
              "not": {"pattern": r"/\.\.(/|$)"},
              "description": "A key returned by POST /v1/uploads (uploads/<id>/<name>)."}
WEBHOOK_URL = {"type": "string", "maxLength": 2048,
               "pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://(\[[0-9A-Fa-f:.]+\]|[^\s\x00-\x1f\x7f/?#@:\[\]]+)"
                          r"(:[0-9]{1,5})?([/?#][^\s\x00-\x1f\x7f]*)?$",
               "description": "http(s) URL; its host must resolve to a public address (or one the server "
                              "allow-lists) when the request is made."}


def _tighten(schemas: dict[str, Any]) -> None:
    """Constraints the routes enforce that the pydantic models leave to code."""
    params = _ref(DecomposeParams)
    batch = schemas["BatchRequest"]
    batch["properties"]["defaults"] = {"type": "object", "description": "DecomposeParams (EditParams for `kind: "
                                       "\"edit\"`) shared by every item."}
    item = schemas["BatchItem"]
    item["properties"]["params"] = {"type": "object", "description": "Overrides of the batch's defaults."}
    item["properties"]["input_key"] = {"anyOf": [UPLOAD_KEY, {"type": "null"}]}
    # Exactly one of input_key / file / source (null counts as absent).
    others = {"input_key": {"type": "null"}, "file": {"type": "null"}, "source": {"type": "null"}}
    item["oneOf"] = [{"required": [name], "properties": {**others, name: {"type": ["string", "object"]}}}
                     for name in ("input_key", "file", "source")]
    item["description"] = ("Exactly one of `input_key` (an upload), `file` (the name of a file part of this "
                           "multipart request) or, in edit batches, `source` (a layer of a finished job).")
    # Edit batches: EditParams, with the instruction in `defaults` or in every item; decompose batches:
    # DecomposeParams and no `source`.
    overrides = {k: v for k, v in schemas["EditParams"].items() if k != "required"}
    schemas["EditParamsOverrides"] = {**overrides, "title": "EditParamsOverrides"}
    edit_overrides = {"$ref": "#/components/schemas/EditParamsOverrides"}
    batch["if"] = {"properties": {"kind": {"const": "edit"}}, "required": ["kind"]}
    batch["then"] = {
        "properties": {"defaults": edit_overrides, "items": {"items": {"properties": {"params": edit_overrides}}}},
        "anyOf": [{"required": ["defaults"], "properties": {"defaults": {"required": ["prompt"]}}},
                  {"properties": {"items": {"items": {"required": ["params"],
                                                      "properties": {"params": {"required": ["prompt"]}}}}}}],
    }
    batch["else"] = {"properties": {"defaults": params, "items": {"items": {"properties": {
        "params": params, "source": {"type": "null"}}}}}}
    schemas["JobRequest"]["properties"]["input_key"] = UPLOAD_KEY
    edit = schemas["EditRequest"]
    edit["properties"]["input_key"] = {"anyOf": [UPLOAD_KEY, {"type": "null"}]}
    edit["oneOf"] = [  # exactly one source (null counts as absent)
        {"required": ["source"], "properties": {"source": {"type": "object"}, "input_key": {"type": "null"}}},
        {"required": ["input_key"], "properties": {"input_key": {"type": "string"}, "source": {"type": "null"}}},
    ]
    schemas["WebhookSpec"]["properties"]["url"] = WEBHOOK_URL
    upload = schemas["UploadRequest"]["properties"]["filename"]
    upload["not"] = {"pattern": r"^\.{1,2}$"}
    layersets_doc.tighten(schemas, UPLOAD_KEY)


IMAGE_TYPES = "image/png, image/jpeg, image/webp, image/gif, image/bmp, image/tiff"

# Links let generated clients (and the fuzzer's stateful phase) follow a submission to its resources.
JOB_LINKS = {
    "GetJob": {"operationId": "getJob", "parameters": {"id": "$response.body#/id"}},
    "CancelJob": {"operationId": "cancelJob", "parameters": {"id": "$response.body#/id"}},
}
BATCH_LINKS = {
    "GetBatch": {"operationId": "getBatch", "parameters": {"id": "$response.body#/id"}},
    "CancelBatch": {"operationId": "cancelBatch", "parameters": {"id": "$response.body#/id"}},
    "ListJobs": {"operationId": "listJobs", "parameters": {"batch": "$response.body#/id"}},
    "GetFirstJob": {"operationId": "getJob", "parameters": {"id": "$response.body#/job_ids/0"}},
}


EVENT_STREAM = {
    "description": "text/event-stream: `progress` events (status, stage, step, total, queue_position, eta_s; a "
                   "batch's counts), then `done` with the final job or batch and the stream closes; `timeout` "
                   "after LAYERQ_EVENTS_MAX_S (reconnect); `gone` when the record expired",
    # OpenAPI 3.1 has no `itemSchema` yet: an event-stream's `schema` describes one event.
    "content": {"text/event-stream": {"schema": {"type": "object", "properties": {
        "event": {"type": "string", "enum": ["progress", "done", "timeout", "gone"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "A JSON object"},
        "id": {"type": "string"}, "retry": {"type": "integer", "minimum": 0}}}}},
}
EVENTS_MAX_S = {"name": "max_s", "in": "query", "required": False,
                "schema": {"type": "integer", "minimum": 1, "maximum": 86400},
                "description": "Close the stream (`event: timeout`) after this many seconds, or at the server's "
                               "LAYERQ_EVENTS_MAX_S if sooner"}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}}


def build_document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template="#/components/schemas/{model}")
    _tighten(defs["$defs"])
    job_id = _id_param("A job id (from `POST /v1/jobs` or a batch)")
    batch_id = _id_param("A batch id (from `POST /v1/batches`)")
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "layerq", "version": layerq.__version__,
                 "description": "Decompose images into editable RGBA layers (Qwen-Image-Layered)."},
        "paths": {
            "/v1/jobs": {
                "get": {
                    "summary": "A batch's jobs in submission order, or the caller's own jobs newest first",
                    "operationId": "listJobs",
                    "description": "With `batch`: that batch's jobs in submission order. Without it: the jobs "
                                   "the caller's API key submitted outside batches (decompositions, edits, "
                                   "layer-set jobs), newest first; `next_cursor` pages back in time. Callers "
                                   "without a key share the public tenant, whose jobs are not listed (an empty "
                                   "page): anyone could read them.",
                    "parameters": [
                        {"name": "batch", "in": "query", "required": False, "schema": {"type": "string",
                                                                                        "pattern": ID_PATTERN}},
                        {"name": "status", "in": "query", "required": False, "schema": _ref(JobStatus)},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                         "description": "`next_cursor` of the previous page"},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}},
                    ],
                    "responses": {"200": _json(JobPage, "One page"), **_errors(*READ)},
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
                                    "additionalProperties": False,
                                    "properties": {
                                        "image": {"type": "string", "format": "binary",
                                                  "description": "PNG, JPEG, WebP, BMP, TIFF or GIF"},
                                        "params": _ref(DecomposeParams),
                                        "webhook": _ref(WebhookSpec),
                                        "cache": {"type": "string", "pattern": FLAG_PATTERN,
                                                  "description": "false/0/no: do not answer from the result cache"},
                                        **SCHEDULE_FIELDS,
                                    },
                                },
                                "encoding": {"image": {"contentType": IMAGE_TYPES},
                                             "params": {"contentType": "application/json"},
                                             "webhook": {"contentType": "application/json"}},
                            },
                            "application/json": {"schema": _ref(JobRequest)},
                        },
                    },
                    "parameters": [IDEMPOTENCY],
                    "responses": {
                        "202": {**_json(JobView, "Accepted; poll the Location"),
                                "headers": {"Location": {"schema": {"type": "string"}}}, "links": JOB_LINKS},
                        "200": _json(JobView, "Answered at once from an identical finished job (`cached_from`)"),
                        **_errors(*SUBMIT),
                    },
                }
            },
            "/v1/edits": {
                "post": {
                    "summary": "Edit one layer of a finished job (or an uploaded image) from an instruction",
                    "description": "The job's result is a new layer set: the source job's stack with the edited "
                                   "layer in its place, re-composited and re-exported; its manifest names the "
                                   "parent and the changed layer. Read and cancel it as any job. A source job "
                                   "that has not succeeded, or a layer it does not have, is 400; `matte: model` "
                                   "is 400 where the server configures no matte model.",
                    "operationId": "submitEdit",
                    "parameters": [IDEMPOTENCY],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref(EditRequest)},
                        "multipart/form-data": {
                            "schema": {"type": "object", "required": ["image", "params"], "additionalProperties": False,
                                       "properties": {
                                           "image": {"type": "string", "format": "binary",
                                                     "description": "The RGBA layer to edit (a one-layer set)"},
                                           "params": _ref(EditParams), "webhook": _ref(WebhookSpec),
                                           "cache": {"type": "string", "pattern": FLAG_PATTERN},
                                           **SCHEDULE_FIELDS}},
                            "encoding": {"image": {"contentType": IMAGE_TYPES},
                                         "params": {"contentType": "application/json"},
                                         "webhook": {"contentType": "application/json"}},
                        },
                    }},
                    "responses": {
                        "202": {**_json(JobView, "Accepted; poll the Location"),
                                "headers": {"Location": {"schema": {"type": "string"}}}, "links": JOB_LINKS},
                        "200": _json(JobView, "Answered at once from an identical finished edit (`cached_from`)"),
                        **_errors(*SUBMIT),
                    },
                }
            },
            "/v1/jobs/{id}": {
                "get": {
                    "summary": "Read a job; result URLs are signed afresh on each read",
                    "operationId": "getJob",
                    "parameters": [job_id],
                    "responses": {"200": _json(JobView, "The job"), **_errors(*READ)},
                }
            },
            "/v1/jobs/{id}/cancel": {
                "post": {
                    "summary": "Cancel a job: queued ones never start, running ones stop at the next step",
                    "operationId": "cancelJob",
                    "parameters": [job_id],
                    "responses": {"200": _json(CancelResult, "What happened (harmless when already finished)"),
                                  **_errors(*READ)},
                }
            },
            "/v1/batches": {
                "get": {
                    "summary": "The caller's batches, newest first",
                    "operationId": "listBatches",
                    "description": "The batches the caller's API key submitted, newest first, with their counts; "
                                   "`next_cursor` pages back in time. Callers without a key get an empty page, as "
                                   "for their jobs.",
                    "parameters": [
                        {"name": "state", "in": "query", "required": False,
                         "schema": {"type": "string", "enum": ["active", "done"]},
                         "description": "`active`: some job has not ended; `done`: every job ended"},
                        {"name": "cursor", "in": "query", "required": False,
                         "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                         "description": "`next_cursor` of the previous page"},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": PAGE_MAX, "default": PAGE_DEFAULT}},
                    ],
                    "responses": {"200": _json(BatchPage, "One page"), **_errors(400, 503)},
                },
                "post": {
                    "summary": "Submit up to 10,000 jobs, or estimate them with dry_run",
                    "operationId": "submitBatch",
                    "parameters": [IDEMPOTENCY],
                    "requestBody": {"required": True, "content": {
                        # A JSON body has no file parts: its items name uploads.
                        "application/json": {"schema": {"allOf": [_ref(BatchRequest), {"properties": {"items": {
                            "items": {"properties": {"file": {"type": "null"}}}}}}]}},
                        "multipart/form-data": {"schema": {"type": "object", "required": ["batch"], "properties": {
                            "batch": _ref(BatchRequest)},
                            "additionalProperties": {"type": "string", "format": "binary"},
                            "propertyNames": {"minLength": 1}},
                            "encoding": {"batch": {"contentType": "application/json"}}},
                    }},
                    "responses": {"202": {**_json(BatchAccepted, "Accepted"), "links": BATCH_LINKS,
                                          "headers": {"Location": {"schema": {"type": "string"}}}},
                                  "200": _json(DryRun, "Dry run estimate"), **_errors(*SUBMIT)},
                }
            },
            "/v1/batches/{id}": {
                "get": {"summary": "Counts per status, progress, ETA and the first page of jobs", "operationId": "getBatch",
                        "parameters": [batch_id], "responses": {"200": _json(BatchView, "The batch"), **_errors(*READ)}}
            },
            "/v1/jobs/{id}/events": {
                "get": {"summary": "Follow a job as Server-Sent Events until it ends", "operationId": "jobEvents",
                        "parameters": [job_id, EVENTS_MAX_S], "responses": {"200": EVENT_STREAM, **_errors(*READ)}}
            },
            "/v1/batches/{id}/events": {
                "get": {"summary": "Follow a batch's counts as Server-Sent Events until every job ended",
                        "operationId": "batchEvents", "parameters": [batch_id, EVENTS_MAX_S],
                        "responses": {"200": EVENT_STREAM, **_errors(*READ)}}
            },
            "/v1/batches/{id}/cancel": {
                "post": {"summary": "Cancel every job of a batch", "operationId": "cancelBatch",
                         "parameters": [batch_id],
                         "responses": {"200": _json(BatchCancelResult, "Counts"), **_errors(*READ)}}
            },
            "/v1/uploads": {
                "post": {"summary": "A URL to PUT one input to; jobs then name it by input_key", "operationId": "createUpload",
                         "requestBody": {"required": False,
                                         "content": {"application/json": {"schema": _ref(UploadRequest)}}},
                         "responses": {"201": _json(UploadTicket, "Upload ticket"), **_errors(400, 413)}}
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
            "/metrics": {
                "get": {"summary": "Prometheus metrics of the API processes", "operationId": "metrics",
                        "responses": {"200": {"description": "Prometheus text exposition format",
                                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}
            },
            "/openapi.json": {
                "get": {"summary": "This document", "operationId": "openapi",
                        "responses": {"200": {"description": "OpenAPI 3.1 document"}}}
            },
        },
        "components": {"schemas": defs["$defs"]},
    }
    doc["paths"].update(layersets_doc.paths(
        ref=_ref, json=_json, errors=_errors, idempotency=IDEMPOTENCY, job_view=JobView, job_links=JOB_LINKS,
        upload_key=UPLOAD_KEY, image_types=IMAGE_TYPES))
    for operations in doc["paths"].values():
        for operation in operations.values():
            # Any request can carry an over-long target (api/contract.py answers it).
            operation["responses"].setdefault("414", _json(ErrorResponse, ERROR_TEXT[414]))
    for path, operations in doc["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                # Keys mode (api/auth.py) and rate limits (api/limits.py) apply to every /v1/ route.
                operation["responses"].setdefault("401", {
                    **_json(ErrorResponse, ERROR_TEXT[401]),
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}})
                operation["responses"].setdefault("429", {**_json(ErrorResponse, ERROR_TEXT[429]),
                                                          "headers": RETRY_AFTER})
    for operations in doc["paths"].values():
        for method in ("post", "put", "patch"):
            if method in operations:
                # A body sent to any of these is read (api/contract.py parses multipart ones).
                for status in (400, 413):
                    operations[method]["responses"].setdefault(str(status), _json(ErrorResponse, ERROR_TEXT[status]))
    return doc


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(build_document())
