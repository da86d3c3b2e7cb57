"""A batch's jobs, a page at a time: `?status=&cursor=&limit=` in submission order; `next_cursor` is
null at the end. Shared by `GET /v1/jobs?batch=` and the batch summary. The query is checked as
strictly as the OpenAPI document describes it, so a bad value is a 400 naming it rather than
silently clamped or ignored."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flask import request

from api.context import owned_batch, services
from api.tenancy import PUBLIC, tenant
from api.views import job_view
from layerq.errors import ValidationFailed
from layerq.jobs import JobStatus

# The defaults of `Settings.page_size` / `page_size_max`, which the OpenAPI document publishes.
PAGE_DEFAULT = 100
PAGE_MAX = 500
CURSOR_PATTERN = r"^[0-9]{1,18}$"
_CURSOR = re.compile(r"[0-9]{1,18}")
_DIGITS = re.compile(r"[0-9]{1,4}")
STATUSES = [s.value for s in JobStatus]


@dataclass(frozen=True)
class PageQuery:
    status: str | None
    cursor: int
    limit: int


def page_query(args: Mapping[str, str], default: int = PAGE_DEFAULT, maximum: int = PAGE_MAX) -> PageQuery:
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
    raw_cursor = args.get("cursor", "0")
    if not _CURSOR.fullmatch(raw_cursor):
        raise ValidationFailed("cursor must be a `next_cursor` from a previous page", field="cursor")
    raw_limit = args.get("limit", str(default))
    if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= maximum:
        raise ValidationFailed(f"limit must be an integer from 1 to {maximum}", field="limit")
    return PageQuery(status=status, cursor=int(raw_cursor), limit=int(raw_limit))


def checked_query() -> PageQuery:
    settings = services().settings
    return page_query(request.args, settings.page_size, settings.page_size_max)


def page_of_jobs(batch_id: str) -> dict:
    checked_query()  # a malformed query is a 400 even for a batch that is not there
    owned_batch(batch_id)
    return page(batch_id)


def page(batch_id: str) -> dict:
    """One page of a batch the caller was checked to own."""
    svc = services()
    query = checked_query()
    status, cursor, limit = query.status, query.cursor, query.limit
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


def page_of_own_jobs() -> dict:
    """The caller's jobs outside batches, newest first; `next_cursor` is the creation time (in
    microseconds) of the page's last job, so jobs submitted meanwhile never shift a page.

    Callers without an API key share the `public` tenant: listing it would hand every anonymous
    caller everyone else's job ids (which are otherwise unguessable), so it answers an empty page
    and such callers keep the ids they were given."""
    svc = services()
    query = checked_query()
    return newest_first(query, lambda before, n: svc.jobs.tenant_job_ids(tenant(), before, n), svc.jobs.get_many,
                        lambda rec: job_view(rec, svc, with_eta=False),
                        keep=lambda rec: query.status is None or rec["status"] == query.status)


def newest_first(query: PageQuery, ids_before: Callable[[int | None, int], list[tuple[str, int]]],
                 records: Callable[[list[str]], list], view: Callable[[dict], dict],
                 keep: Callable[[dict], bool] = lambda _rec: True) -> dict:
    """One page of a tenant's index (`JobStore.newest_ids`): `ids_before(cursor, n)` gives (id, created
    µs) rows, `records(ids)` their records (None: expired, skipped), `keep` filters, `view` answers.
    The public tenant's page is always empty (`page_of_own_jobs`)."""
    if tenant() == PUBLIC:
        return {"items": [], "next_cursor": None}
    out: list[dict] = []
    before = query.cursor or None
    while len(out) < query.limit:
        rows = ids_before(before, query.limit * 2)
        if not rows:
            return {"items": out, "next_cursor": None}
        for (_, created_us), rec in zip(rows, records([member for member, _ in rows])):
            before = created_us
            if rec and keep(rec):
                out.append(view(rec))
                if len(out) == query.limit:
                    break
    return {"items": out, "next_cursor": str(before)}
