"""Requests and queue messages of the layer-set jobs: a layer decomposed again, a compose job (ops
applied to a finished set) and a combine job (uploaded layers stacked). Pydantic only: the API
imports this; the same models generate the OpenAPI document and validate messages in the worker."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from layerq.layer_ops import CombineParams, ComposeParams
from layerq.params import DecomposeParams, _integral
from layerq.requests import _check_upload_key
from layerq.scheduling import (
    CANCEL_AFTER_DOC, MAX_CANCEL_AFTER_S, PRIORITY_DOC, RETAIN_DESCRIPTION, Priority, RetainSeconds,
)
from layerq.webhooks import WebhookSpec

ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"
#: Most layers one combine job takes (as many as `CombineParams.placements` can place).
MAX_COMBINE_LAYERS = 64


class SourceSet(BaseModel):
    """A finished job of the caller whose layer set is the source."""

    model_config = ConfigDict(extra="forbid", strict=True)

    job_id: str = Field(..., pattern=ID_PATTERN, description="A succeeded job that produced a layer set.")


class SourceLayer(SourceSet):
    """One layer of a finished layer set."""

    layer: Annotated[int, BeforeValidator(_integral)] = Field(
        ..., ge=0, le=99, description="The layer's index in that set (0 = bottom).")


class LayerDecomposeRequest(BaseModel):
    """`POST /v1/layersets/decompose`: decompose one layer of a finished set into sub-layers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: SourceLayer
    params: DecomposeParams = Field(default_factory=DecomposeParams)
    webhook: WebhookSpec | None = None
    priority: Priority | None = Field(None, description=PRIORITY_DOC)
    cancel_after_s: float | None = Field(None, gt=0, le=MAX_CANCEL_AFTER_S, description=CANCEL_AFTER_DOC)
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)


class ComposeRequest(BaseModel):
    """`POST /v1/layersets/compose`: apply operations, in order, to a finished set."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: SourceSet
    params: ComposeParams = Field(default_factory=ComposeParams)
    webhook: WebhookSpec | None = None
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)


class CombineRequest(BaseModel):
    """`POST /v1/layersets/combine` with a JSON body: uploaded RGBA layers, bottom first."""

    model_config = ConfigDict(extra="forbid", strict=True)

    input_keys: list[str] = Field(..., min_length=1, max_length=MAX_COMBINE_LAYERS,
                                  description="Keys from POST /v1/uploads, bottom layer first.")
    params: CombineParams = Field(default_factory=CombineParams)
    webhook: WebhookSpec | None = None
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)

    @field_validator("input_keys")
    @classmethod
    def _uploads(cls, keys: list[str]) -> list[str]:
        return [_check_upload_key(key) for key in keys]


class ComposeMessage(BaseModel):
    """What the API puts on the `cpu` queue for a compose job: the parent's layer keys (as its result
    names them, so a cached parent works too) and the ops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    parent_id: str
    layer_keys: list[str]
    params: ComposeParams


class CombineMessage(BaseModel):
    """What the API puts on the `cpu` queue for a combine job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_keys: list[str]
    params: CombineParams
