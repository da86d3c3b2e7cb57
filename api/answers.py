"""The answer to a single-job submission, the same for every kind: the job as accepted (read before
its message is sent, so an idle worker cannot have moved it on), 202 with its `Location`, or 200 when
an identical finished job answered it from the cache."""

from __future__ import annotations

from flask import Response, jsonify, request, url_for

from api.submission import Item, submit
from api.tenancy import tenant
from api.views import job_view
from layerq.scheduling import Schedule
from storage.services import Services


def answer_one(svc: Services, item: Item, *, webhook: dict | None, use_cache: bool,
               schedule: Schedule = Schedule(), retain_s: int | None = None) -> Response:
    use_cache = use_cache and "no-cache" not in request.headers.get("Cache-Control", "")
    done = submit(svc, tenant(), [item], webhook=webhook, use_cache=use_cache, schedule=schedule, retain_s=retain_s,
                  before_send=lambda created: job_view(svc.jobs.get(created.job_ids[0]), svc))
    (job_id,) = done.job_ids
    resp = jsonify(done.answer)
    resp.status_code = 200 if job_id in done.cached else 202
    resp.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return resp
