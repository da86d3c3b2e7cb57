"""Job records as clients see them: timestamps in ISO 8601, ETAs, and download URLs signed afresh on
every read (so a URL never outlives `url_ttl_s` from the moment it was handed out)."""

from __future__ import annotations

from typing import Any

from flask import request

from layerq.jobs import JobStatus, JobView
from layerq.queues import TASK_OF_QUEUE, WEBHOOK_QUEUE
from layerq.results import iso, signed_result
from storage.services import Services


def job_view(rec: dict[str, Any], svc: Services, *, with_eta: bool = True) -> dict[str, Any]:
    status = JobStatus(rec["status"])
    view: dict[str, Any] = {
        "id": rec["id"],
        "kind": rec["kind"],
        "status": status.value,
        "params": rec["params"],
        "progress": rec.get("progress") or {"stage": "queued", "step": 0, "total": 0},
        "queue_position": None,
        "eta_s": None,
        "created_at": iso(rec.get("created_at")),
        "started_at": iso(rec.get("started_at")),
        "finished_at": iso(rec.get("finished_at")),
        "attempts": rec.get("attempts", 0),
        "error": rec.get("error"),
        "result": None,
        "batch_id": rec.get("batch_id") or None,
        "cached_from": rec.get("cached_from") or None,
        "priority": rec.get("priority") or None,
        "deadline_at": iso(rec.get("deadline")),
        "retained_until": iso(rec.get("expires_at")),
    }
    if with_eta:  # one read more per job: single-job answers only, not pages of a listing
        view["parent"], view["children"] = svc.lineage.of(rec["id"])
    if status is JobStatus.QUEUED:
        if svc.admission.enabled and rec.get("queue", rec["kind"]) in TASK_OF_QUEUE:
            # where fair admission will put it, not its place in arrival order
            view["queue_position"] = svc.admission.position(rec)
        else:
            view["queue_position"] = svc.jobs.queue_position(rec.get("queue", rec["kind"]), rec["id"])
    if not status.is_terminal() and with_eta and rec.get("queue") != WEBHOOK_QUEUE:  # measured: GPU jobs only
        view["eta_s"] = _eta(rec, view["queue_position"], svc)
    view["timings"] = rec.get("timings")
    if status is JobStatus.SUCCEEDED and rec.get("result"):
        view["result"] = signed_result(rec["id"], rec["result"], svc.store, svc.settings.url_ttl_s, absolute=absolute)
    return JobView.model_validate(view).model_dump(mode="json")


def absolute(url: str) -> str:
    # The local-disk backend signs paths when no public URL is configured: serve them from the host
    # the client used to reach us.
    if url.startswith("/"):
        return request.host_url.rstrip("/") + url
    return url


def _eta(rec: dict[str, Any], position: int | None, svc: Services) -> float | None:
    """Seconds until this job ends: its own estimated time (measured per step and per bucket), plus,
    while queued, the estimated work ahead of it shared among the live workers."""
    own = svc.stats_of(rec["kind"]).estimate_s(rec["params"])
    if own is None:
        return None
    if rec["status"] == JobStatus.QUEUED.value:
        workers = max(1, svc.workers.live_count(rec.get("queue") or rec["kind"]))
        # Jobs ahead are assumed to be like this one; their exact parameters would cost a read each.
        return round(own * ((position or 0) / workers + 1), 1)
    progress = rec.get("progress") or {}
    total, step = progress.get("total") or 0, progress.get("step") or 0
    remaining = own * (1.0 - step / total) if total else own
    return round(max(0.0, remaining), 1)
