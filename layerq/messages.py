"""Typed messages between processes. The API enqueues these by task name (it never imports worker
code); the worker validates them again, so a hand-made or stale message fails the job cleanly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from layerq.params import DecomposeParams

DECOMPOSE_TASK = "layerq.decompose"
DECOMPOSE_QUEUE = "decompose"


class DecomposeMessage(BaseModel):
    """What the API puts on the `decompose` queue: keys and parameters, never image bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_key: str
    params: DecomposeParams
