"""A batch's jobs, a page at a time: `?status=&cursor=&limit=` in submission order; `next_cursor` is
null at the end. Shared by `GET /v1/jobs?batch=` and the batch summary."""

from __future__ import annotations

from flask import request

from api.context import owned_batch, services
from api.views import job_view
from layerq.errors import ValidationFailed


def page_of_jobs(batch_id: str) -> dict:
    owned_batch(batch_id)
    return page(batch_id)


def page(batch_id: str) -> dict:
    """One page of a batch the caller was checked to own."""
    svc = services()
    try:
        cursor = int(request.args.get("cursor", 0))
        limit = min(svc.settings.page_size_max, max(1, int(request.args.get("limit", svc.settings.page_size))))
    except ValueError as exc:
        raise ValidationFailed("cursor and limit must be integers", field="cursor") from exc
    status = request.args.get("status")
    out, pos = [], cursor
    while len(out) < limit:
        ids = svc.batches.job_ids(batch_id, pos, pos + limit * 2 - 1)
        if not ids:
            pos = None
            break
        for offset, rec in enumerate(svc.jobs.get_many(ids)):
            if rec and (status is None or rec["status"] == status):
                out.append(job_view(rec, svc, with_eta=False))
                if len(out) == limit:
                    pos = pos + offset + 1
                    break
        else:
            pos += len(ids)
    return {"items": out, "next_cursor": str(pos) if pos is not None else None}
