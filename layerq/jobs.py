"""Job lifecycle: statuses, guarded transitions and the record the API answers with."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import BaseModel, Field

from layerq.errors import IllegalTransition


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELING = "canceling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    """Not started within its `cancel_after_s`; never reached a GPU."""

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED})

# Which statuses each status may move to. Terminal statuses move nowhere; a redelivered job may
# go from running to running again (a new attempt).
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED, JobStatus.EXPIRED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELING, JobStatus.CANCELED}
    ),
    # A cancel request wins even over a job that has just finished: its results are discarded.
    JobStatus.CANCELING: frozenset({JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
    JobStatus.EXPIRED: frozenset(),
}


def check_transition(current: JobStatus, new: JobStatus) -> None:
    """Raise IllegalTransition unless `current → new` is allowed."""
    if new not in ALLOWED[current]:
        raise IllegalTransition(f"job cannot move from {current.value} to {new.value}")


class Progress(BaseModel):
    stage: str = "queued"
    step: int = 0
    total: int = 0


class JobError(BaseModel):
    code: str
    message: str


class LayerLink(BaseModel):
    index: int
    url: str
    width: int
    height: int


class JobResult(BaseModel):
    layers: list[LayerLink]
    composite: str
    exports: dict[str, str]
    manifest: str
    expires_at: str
    caption: str | None = Field(None, description="The caption the pipeline wrote for an auto-captioned job "
                                "(empty `prompt`); giving it as `prompt` reproduces the job. Null otherwise.")


class JobParent(BaseModel):
    """The finished job a job was made from, and the layer of it when one layer was used."""

    job_id: str
    layer: int | None = None


class JobView(BaseModel):
    """What `GET /v1/jobs/{id}` answers."""

    id: str
    kind: str
    status: JobStatus
    params: dict[str, Any]
    progress: Progress
    queue_position: int | None = Field(None, description="Jobs ahead of this one; null unless queued.")
    eta_s: float | None = Field(None, description="Estimated seconds until the job finishes.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    error: JobError | None = None
    result: JobResult | None = None
    timings: dict[str, float] | None = Field(None, description="Seconds per stage of the last attempt.")
    batch_id: str | None = None
    cached_from: str | None = Field(None, description="Set when answered from an identical finished job.")
    parent: JobParent | None = Field(None, description="The layer set this job was made from (recursive "
                                     "decomposition, compose); null for a job made from an image.")
    children: list[str] | None = Field(None, description="Ids of the jobs made from this job's layer set; "
                                       "null in listings, which do not read them.")
    priority: str | None = Field(None, description="`interactive` or `bulk` (null for jobs made before priorities).")
    deadline_at: str | None = Field(None, description="When a job still queued ends `expired` (its `cancel_after_s`).")
    retained_until: str | None = Field(
        None, description="When the job's record and result objects are deleted; null until it ends.")
