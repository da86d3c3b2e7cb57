"""Request bodies of the JSON endpoints (jobs from uploaded inputs, batches, uploads). The same models
validate requests and generate the OpenAPI document."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from layerq.edits import EditSource
from layerq.params import DecomposeParams, _integral
from layerq.scheduling import (  # noqa: F401 (MAX_RETAIN_S re-exported)
    CANCEL_AFTER_DOC, MAX_CANCEL_AFTER_S, MAX_RETAIN_S, PRIORITY_DOC, RETAIN_DESCRIPTION, Priority, RetainSeconds,
)
from layerq.webhooks import WebhookSpec

MAX_BATCH_ITEMS = 10_000
UPLOAD_PREFIX = "uploads/"


def _check_upload_key(key: str) -> str:
    # Jobs may only read what was uploaded for them, never another job's results.
    parts = key.split("/")
    if not key.startswith(UPLOAD_PREFIX) or len(parts) != 3 or not all(parts) or ".." in parts:
        raise ValueError("must be a key returned by POST /v1/uploads (uploads/<id>/<name>)")
    return key


class JobRequest(BaseModel):
    """`POST /v1/jobs` with a JSON body: a job on an input uploaded through `POST /v1/uploads`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_key: str = Field(..., max_length=300)
    params: DecomposeParams = Field(default_factory=DecomposeParams)
    webhook: WebhookSpec | None = None
    cache: bool = Field(True, description="Answer from an identical finished job of the same tenant, if any.")
    priority: Priority | None = Field(None, description=PRIORITY_DOC)
    cancel_after_s: float | None = Field(None, gt=0, le=MAX_CANCEL_AFTER_S, description=CANCEL_AFTER_DOC)
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)

    _key = field_validator("input_key")(_check_upload_key)


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    input_key: str | None = Field(None, max_length=300, description="An uploaded input.")
    file: str | None = Field(None, max_length=200, description="Name of a multipart file part of this request.")
    params: dict[str, Any] = Field(default_factory=dict, description="Overrides of the batch's defaults.")
    source: EditSource | None = Field(None, description='`kind: "edit"` only: a layer of a finished job to edit.')

    @field_validator("input_key")
    @classmethod
    def _upload(cls, v: str | None) -> str | None:
        return None if v is None else _check_upload_key(v)


class BatchRequest(BaseModel):
    """`POST /v1/batches`: many jobs sharing defaults, each item with its own input and overrides."""

    model_config = ConfigDict(extra="forbid", strict=True)

    kind: Literal["decompose", "edit"] = Field(
        "decompose", description='`edit`: every item edits a layer (`source`) or an image; `defaults` are EditParams '
        "(one instruction for all items, or a `prompt` per item).",
    )
    items: list[BatchItem] = Field(..., min_length=1, max_length=MAX_BATCH_ITEMS)
    defaults: dict[str, Any] = Field(default_factory=dict, description="DecomposeParams shared by every item.")
    webhook: WebhookSpec | None = None
    cache: bool = True
    dry_run: bool = Field(False, description="Estimate GPU-seconds and completion time; enqueue nothing.")
    priority: Priority | None = Field(None, description=PRIORITY_DOC)
    cancel_after_s: float | None = Field(None, gt=0, le=MAX_CANCEL_AFTER_S, description=CANCEL_AFTER_DOC)
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)


class UploadRequest(BaseModel):
    """`POST /v1/uploads`: ask for a URL to PUT one input image to."""

    model_config = ConfigDict(extra="forbid", strict=True)

    content_type: str = Field("application/octet-stream", max_length=100)
    filename: str = Field("input", max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
