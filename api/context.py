"""What a request handler reaches for: the process's `Services`, and the records the caller may see.
Blueprints import this module, never the app factory (`api.app`), so `api/` has no import cycle.

Ownership is checked here once: a job or batch of another tenant reads exactly like one that does not
exist (404), so ids cannot be probed across tenants."""

from __future__ import annotations

from typing import Any

from flask import current_app

from api.ids import check_id
from api.tenancy import tenant
from layerq.errors import JobNotFound
from storage.services import Services

EXTENSION = "layerq"


def services() -> Services:
    return current_app.extensions[EXTENSION]




def owned_job(job_id: str) -> dict[str, Any]:
    """The caller's job record, or JobNotFound (field `id`)."""
    rec = services().jobs.get(check_id(job_id, "id", "job"))
    if rec.get("tenant", "") not in ("", tenant()):
        raise JobNotFound(f"no job with id {job_id!r}", field="id")  # not yours: indistinguishable from absent
    return rec


def owned_batch(batch_id: str) -> dict[str, Any]:
    """The caller's batch, or JobNotFound (field `batch`)."""
    try:
        batch = services().batches.get(check_id(batch_id, "batch", "batch"))
    except JobNotFound:
        raise JobNotFound(f"no batch with id {batch_id!r}", field="batch") from None
    if batch["tenant"] != tenant():
        raise JobNotFound(f"no batch with id {batch_id!r}", field="batch")
    return batch
