"""Typed messages between processes. The API enqueues these by task name (it never imports worker
code); the worker validates them again, so a hand-made or stale message fails the job cleanly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from layerq.params import DecomposeParams

from layerq.queues import DECOMPOSE_QUEUE, DECOMPOSE_TASK  # noqa: F401 (re-exported: names live in layerq/queues.py)
from layerq.queues import EDIT_QUEUE, TASK_OF_QUEUE


class DecomposeMessage(BaseModel):
    """What the API puts on the `decompose` queue: keys and parameters, never image bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_key: str
    params: DecomposeParams


def message_for(queue: str, job_id: str, input_key: str, params: dict) -> tuple[str, dict]:
    """The task name and message body of a job on `queue` (the API's enqueue and the workers' sweep of
    unsent jobs build them the same way)."""
    from layerq.edits import EditMessage

    cls = EditMessage if queue == EDIT_QUEUE else DecomposeMessage
    msg = cls.model_validate({"job_id": job_id, "input_key": input_key, "params": params})
    return TASK_OF_QUEUE[queue], msg.model_dump(mode="json")
