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

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# Which statuses each status may move to. Terminal statuses move nowhere; a redelivered job may
# go from running to running again (a new attempt).
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELING, JobStatus.CANCELED}
    ),
    # A cancel request wins even over a job that has just finished: its results are discarded.
    JobStatus.CANCELING: frozenset({JobStatus.CANCELED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELED: frozenset(),
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
    retained_until: str | None = Field(
        None, description="When the job's record and result objects are deleted; null until it ends.")
