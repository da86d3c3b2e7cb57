"""The query of `GET /v1/jobs` (and the page inside `GET /v1/batches/{id}`): `status`, `cursor`,
`limit`, checked as strictly as the OpenAPI document describes them, so a bad value is a 400
naming it rather than silently clamped or ignored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from layerq.errors import ValidationFailed
from layerq.jobs import JobStatus

PAGE_MAX = 500
PAGE_DEFAULT = 100
CURSOR_PATTERN = r"^[0-9]{1,18}$"
_CURSOR = re.compile(r"[0-9]{1,18}")
_DIGITS = re.compile(r"[0-9]{1,4}")
STATUSES = [s.value for s in JobStatus]


@dataclass(frozen=True)
class PageQuery:
    status: str | None
    cursor: int
    limit: int


def page_query(args: Mapping[str, str]) -> PageQuery:
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status must be one of {', '.join(STATUSES)}", field="status")
    raw_cursor = args.get("cursor", "0")
    if not _CURSOR.fullmatch(raw_cursor):
        raise ValidationFailed("cursor must be a `next_cursor` from a previous page", field="cursor")
    raw_limit = args.get("limit", str(PAGE_DEFAULT))
    if not _DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= PAGE_MAX:
        raise ValidationFailed(f"limit must be an integer from 1 to {PAGE_MAX}", field="limit")
    return PageQuery(status=status, cursor=int(raw_cursor), limit=int(raw_limit))
