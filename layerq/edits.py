"""Edit jobs' parameters, request body and queue message (torch-free: the API, the CLI and the worker
validate with the same models, and the OpenAPI document is generated from them).

An edit changes one RGBA layer from an instruction with `QwenImageEditPlusPipeline`; its source is a
layer of a finished job of the same tenant (a decomposition or an earlier edit) or an uploaded image.
Parameter names are the pipeline's; defaults are the model authors' (50 steps, true CFG 4.0,
negative prompt " ")."""

from __future__ import annotations

import secrets
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from layerq.params import MAX_SEED, JsonInt, _integral
from layerq.scheduling import (
    CANCEL_AFTER_DOC, MAX_CANCEL_AFTER_S, PRIORITY_DOC, RETAIN_DESCRIPTION, Priority, RetainSeconds,
)
from layerq.webhooks import WebhookSpec

KIND = "edit"
MATTES = ("keep", "chroma", "model")
MAX_PROMPT_CHARS = 2000


class EditParams(BaseModel):
    """Parameters of one edit (Qwen-Image-Edit-2509)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    prompt: str = Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, pattern=r"\S",
                        description="The edit instruction (required, not blank).")
    negative_prompt: str = Field(" ", max_length=2000, description="A non-empty negative prompt turns CFG on.")
    true_cfg_scale: float = Field(4.0, ge=1.0, le=20.0, description="Classifier-free guidance scale.")
    num_inference_steps: JsonInt = Field(
        50, ge=2, le=200, description="Denoising steps (the scheduler needs two or more)."
    )
    seed: Annotated[int | None, BeforeValidator(_integral)] = Field(
        None, ge=0, le=MAX_SEED, description="Chosen and recorded when absent."
    )
    matte: Literal["keep", "chroma", "model"] = Field(
        "chroma", description="How the edited layer gets its alpha back: the source's alpha (`keep`), keying out "
        "the green backdrop (`chroma`), or a segmentation model (`model`, only where the server configures one).",
    )

    def with_seed(self) -> "EditParams":
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})


class EditSource(BaseModel):
    """A layer of a finished job (a decomposition or an earlier edit) of the same tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    job_id: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]{1,64}$",
                        description="A succeeded job of the caller's (a decomposition or an edit).")
    layer: JsonInt = Field(..., ge=0, le=1000, description="Index of the layer, 0 = bottom.")


class EditJobParams(EditParams):
    """What an edit job records and its message carries: the parameters and, for a layer of another
    job, that source (part of the result-cache key, shown in the job's `params`)."""

    source: EditSource | None = None


class EditRequest(BaseModel):
    """`POST /v1/edits` with a JSON body: edit a layer of a finished job, or an uploaded image."""

    model_config = ConfigDict(extra="forbid", strict=True)

    source: EditSource | None = Field(None, description="The layer to edit; or give `input_key`.")
    input_key: str | None = Field(None, max_length=300, description="An image uploaded through POST /v1/uploads.")
    params: EditParams
    webhook: WebhookSpec | None = None
    cache: bool = Field(True, description="Answer from an identical finished edit of the same tenant, if any.")
    priority: Priority | None = Field(None, description=PRIORITY_DOC)
    cancel_after_s: float | None = Field(None, gt=0, le=MAX_CANCEL_AFTER_S, description=CANCEL_AFTER_DOC)
    retain_s: RetainSeconds | None = Field(None, description=RETAIN_DESCRIPTION)

    @field_validator("input_key")
    @classmethod
    def _upload(cls, v: str | None) -> str | None:
        from layerq.requests import _check_upload_key

        return None if v is None else _check_upload_key(v)


class EditMessage(BaseModel):
    """What the API puts on the `edit` queue: keys and parameters, never image bytes. `input_key` is
    the source layer's object (or the stored upload)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_key: str
    params: EditJobParams
