"""Typed messages between processes. The API enqueues these by task name (it never imports worker
code); the worker validates them again, so a hand-made or stale message fails the job cleanly."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from layerq.params import DecomposeParams

from layerq.queues import DECOMPOSE_QUEUE, DECOMPOSE_TASK  # noqa: F401 (re-exported: names live in layerq/queues.py)
from layerq.queues import TASK_OF_KIND


class DecomposeMessage(BaseModel):
    """What the API puts on the `decompose` queue: keys and parameters, never image bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    input_key: str
    params: DecomposeParams


def message_for(kind: str, job_id: str, input_key: str, params: dict,
                message: dict | None = None) -> tuple[str, dict]:
    """The task name and message body of a job of `kind` (the API's enqueue and the workers' sweep of
    unsent jobs build them the same way). Decompose and edit messages are the job's input key and
    params; compose and combine messages carry more (the parent's layer keys, the uploads), so their
    jobs keep the whole body in their record as `message`. Raises pydantic's ValidationError for a
    body its kind's model refuses, KeyError for an unknown kind."""
    from layerq.edits import EditMessage
    from layerq.layersets import CombineMessage, ComposeMessage

    model = {"decompose": DecomposeMessage, "edit": EditMessage, "compose": ComposeMessage,
             "combine": CombineMessage}[kind]
    body = message if message is not None else {"job_id": job_id, "input_key": input_key, "params": params}
    return TASK_OF_KIND[kind], model.model_validate(body).model_dump(mode="json")
