"""Typed messages between processes. The API enqueues these by task name (it never imports worker
code); the worker validates them again, so a hand-made or stale message fails the job cleanly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from layerq.params import DecomposeParams

from layerq.queues import DECOMPOSE_QUEUE, DECOMPOSE_TASK  # noqa: F401 (re-exported: names live in layerq/queues.py)


class DecomposeMessage(BaseModel):
    """What the API puts on the `decompose` queue: keys and parameters, never image bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_key: str
    params: DecomposeParams
