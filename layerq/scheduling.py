"""How a job is scheduled, apart from what it computes: its priority and its deadline in the queue.

`interactive` jobs are admitted to the broker ahead of `bulk` ones (storage/admission.py); a single
job defaults to `interactive`, a batch to `bulk`. `cancel_after_s` is the time a job may wait in the
queue: one not started by then ends `expired` without touching a GPU. `retain_s` is how long its
record and result objects live once it ends (storage/retention.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BeforeValidator

from layerq.errors import ValidationFailed
from layerq.params import _integral

Priority = Literal["interactive", "bulk"]
PRIORITIES: tuple[str, ...] = ("interactive", "bulk")
MAX_CANCEL_AFTER_S = 7 * 24 * 3600.0

PRIORITY_DOC = ("`interactive` is admitted ahead of `bulk` (bulk still gets a share); default: interactive for a "
                "job, bulk for a batch.")
MAX_RETAIN_S = 365 * 24 * 3600
"""Schema bound of `retain_s`; the server clamps to its own `LAYERQ_RETAIN_MAX_S` below that."""
RetainSeconds = Annotated[int, annotated_types.Ge(1), annotated_types.Le(MAX_RETAIN_S), BeforeValidator(_integral)]
"""Bounds before the validator: after a BeforeValidator, on an optional field, pydantic writes them into
the schema as `ge`/`le`, which JSON Schema (and so the fuzzer) ignores."""
RETAIN_DESCRIPTION = ("Seconds the job's record and result objects are kept once it ends; default "
                      "LAYERQ_JOB_TTL_S, clamped to the server's LAYERQ_RETAIN_MAX_S.")
CANCEL_AFTER_DOC = "Seconds the job may wait in the queue; not started by then, it ends `expired`. Absent: no limit."


@dataclass(frozen=True)
class Schedule:
    priority: str = "interactive"
    cancel_after_s: float = 0.0

    def job_fields(self) -> dict[str, Any]:
        """Keyword arguments of storage.jobs.NewJob."""
        return {"priority": self.priority, "cancel_after_s": self.cancel_after_s}


def schedule(priority: str | None, cancel_after_s: float | None, *, default_priority: str) -> Schedule:
    return Schedule(priority=priority or default_priority, cancel_after_s=float(cancel_after_s or 0.0))


def schedule_from_form(form: Any, *, default_priority: str) -> Schedule:
    """The `priority` and `cancel_after_s` fields of a multipart form, checked like the JSON ones."""
    priority = form.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise ValidationFailed("priority must be interactive or bulk", field="priority")
    raw = form.get("cancel_after_s")
    seconds = None
    if raw is not None:
        try:
            seconds = float(raw)
        except ValueError:
            seconds = math.nan
        if not (0 < seconds <= MAX_CANCEL_AFTER_S):
            raise ValidationFailed(f"cancel_after_s must be a number of seconds in (0, {MAX_CANCEL_AFTER_S:.0f}]",
                                   field="cancel_after_s")
    return schedule(priority, seconds, default_priority=default_priority)
