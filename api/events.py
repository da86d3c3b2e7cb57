"""Server-Sent Events: `GET /v1/jobs/{id}/events` and `GET /v1/batches/{id}/events`.

A stream sends `event: progress` whenever what a client shows changes (status, stage, step, queue
position, ETA; a batch's counts), then `event: done` carrying the final job (as `GET /v1/jobs/{id}`
answers it) or batch counts, and closes. It reads the record from Redis every
`LAYERQ_EVENTS_POLL_S` (one HGETALL and a ZRANK: cheaper than a pub/sub connection per stream, and
nothing in the job store's write path changes).

Under gunicorn's gthread worker an open stream holds one thread of its process, so streams are
bounded three ways: at most `LAYERQ_EVENTS_MAX_STREAMS` per process (503 with Retry-After beyond,
default half the threads, so plain requests always find a thread), at most `LAYERQ_EVENTS_MAX_S`
long (then `event: timeout`: reconnect), and a comment line every `LAYERQ_EVENTS_HEARTBEAT_S`, whose
failed write is how a vanished client frees its thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, request, stream_with_context

from api.context import owned_batch, owned_job, services
from api.errors import error_response
from api.views import job_view
from layerq.config import Settings
from layerq.errors import JobNotFound, ValidationFailed
from layerq.jobs import JobStatus

bp = Blueprint("events", __name__)

MAX_S_LIMIT = 86_400
"""Schema bound of `?max_s=`; the server's own `LAYERQ_EVENTS_MAX_S` caps it further."""

_lock = threading.Lock()
_open = 0


def frame(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _max_streams(settings: Settings) -> int:
    return settings.events_max_streams or max(1, settings.api_threads // 2)


def _take_slot(settings: Settings) -> bool:
    global _open
    with _lock:
        if _open >= _max_streams(settings):
            return False
        _open += 1
        return True


def _free_slot() -> None:
    global _open
    with _lock:
        _open -= 1


def _max_s(settings: Settings) -> float:
    """`?max_s=N` (1 to 86400): close the stream after N seconds, or at the server's limit if sooner."""
    raw = request.args.get("max_s")
    if raw is None:
        return settings.events_max_s
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_S_LIMIT:
        raise ValidationFailed(f"max_s must be an integer from 1 to {MAX_S_LIMIT}", field="max_s")
    return min(float(raw), settings.events_max_s)


def _stream(read: Callable[[], tuple[dict[str, Any] | None, Any, bool]], settings: Settings):
    """`read()` → (snapshot or None when gone, final payload, ended). The response frees its slot
    when closed, whether or not it was ever iterated."""
    max_s = _max_s(settings)  # checked before a slot is taken
    if not _take_slot(settings):
        resp, status = error_response("too_many_streams", "too many event streams open; retry later", 503)
        resp.headers["Retry-After"] = "5"
        return resp, status

    def frames() -> Iterator[str]:
        deadline = time.monotonic() + max_s
        beat = time.monotonic() + settings.events_heartbeat_s
        last: dict[str, Any] | None = None
        yield "retry: 2000\n\n"
        while True:
            snapshot, final, ended = read()
            if snapshot is None:
                yield frame("gone", {"message": "the record expired"})
                return
            if snapshot != last:
                yield frame("progress", snapshot)
                last, beat = snapshot, time.monotonic() + settings.events_heartbeat_s
            if ended:
                yield frame("done", final)
                return
            now = time.monotonic()
            if now >= deadline:
                yield frame("timeout", {"message": "stream length limit reached; reconnect to follow on"})
                return
            if now >= beat:
                yield ": keep-alive\n\n"
                beat = now + settings.events_heartbeat_s
            time.sleep(settings.events_poll_s)

    resp = Response(stream_with_context(frames()), mimetype="text/event-stream")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["X-Accel-Buffering"] = "no"  # nginx and friends: pass events on as they come
    resp.call_on_close(_free_slot)
    return resp


def _job_snapshot(view: dict[str, Any]) -> dict[str, Any]:
    progress = view["progress"]
    return {"id": view["id"], "status": view["status"], "stage": progress["stage"], "step": progress["step"],
            "total": progress["total"], "queue_position": view["queue_position"], "eta_s": view["eta_s"]}


@bp.get("/v1/jobs/<job_id>/events")
def job_events(job_id: str):
    svc = services()
    job_id = owned_job(job_id)["id"]  # 404 (also for another tenant's job) before any stream opens

    polls_since_end = 0

    def read():
        nonlocal polls_since_end
        rec = svc.jobs.get_many([job_id])[0]
        if rec is None:
            return None, None, True
        view = job_view(rec, svc)
        if JobStatus(rec["status"]).is_terminal():
            polls_since_end += 1
        # A job is sealed (`retained_until`) one round trip after its terminal transition: the
        # final event waits for it, one poll at most, so it carries what GET would answer.
        ended = polls_since_end > 1 or (polls_since_end == 1 and rec.get("expires_at") is not None)
        return _job_snapshot(view), view, ended

    return _stream(read, svc.settings)


@bp.get("/v1/batches/<batch_id>/events")
def batch_events(batch_id: str):
    svc = services()
    batch_id = owned_batch(batch_id)["id"]

    def read():
        try:
            batch = svc.batches.get(batch_id)
        except JobNotFound:  # expired mid-stream
            return None, None, True
        counts = batch["counts"]
        done = counts["succeeded"] + counts["failed"] + counts["canceled"] + counts.get("expired", 0)
        snapshot = {"id": batch_id, "count": batch["count"], "counts": counts,
                    "progress": round(done / batch["count"], 4)}
        return snapshot, snapshot, done >= batch["count"]

    return _stream(read, svc.settings)
