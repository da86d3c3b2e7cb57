"""What the API tells operators: `GET /metrics` (Prometheus) and per-request log context.

Metric names live in layerq/metrics.py. Requests are counted by route template (bounded
cardinality), and accepted jobs from the submission responses themselves, so the submission code
needs no metrics calls of its own.
"""

from __future__ import annotations

import time

from flask import Flask, Response, g, request

from api.tenancy import tenant
from layerq import metrics
from layerq.logs import bind_log_context
from layerq.queues import DECOMPOSE_QUEUES, EDIT_QUEUE, LAYERSET_QUEUE

JOB_ROUTE = "/v1/jobs"
BATCH_ROUTE = "/v1/batches"
EDIT_ROUTE = "/v1/edits"


def register(app: Flask, queued_by_priority) -> None:
    depth = metrics.QueueDepth(queued_by_priority, (*DECOMPOSE_QUEUES, EDIT_QUEUE, LAYERSET_QUEUE))

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(metrics.exposition(depth), mimetype="text/plain; version=0.0.4")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        view_args = request.view_args or {}
        g.log_context = bind_log_context(tenant=tenant(), job_id=view_args.get("job_id"))

    @app.after_request
    def _count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        metrics.HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        if "started" in g:
            metrics.HTTP_SECONDS.labels(request.method, route).observe(time.perf_counter() - g.started)
        if request.method == "POST" and response.status_code in (200, 202):
            _count_submissions(route, response)
        return response

    @app.teardown_request
    def _unbind(_exc) -> None:
        token = g.pop("log_context", None)
        if token is not None:
            token.reset()


def _count_submissions(route: str, response: Response) -> None:
    if route in (JOB_ROUTE, EDIT_ROUTE):
        source = "job" if response.status_code == 202 else "cached"
        metrics.JOBS_SUBMITTED.labels("edit" if route == EDIT_ROUTE else "decompose", source).inc()
    elif route == BATCH_ROUTE and response.status_code == 202:
        body = response.get_json(silent=True) or {}
        cached = int(body.get("cached", 0) or 0)
        count = int(body.get("count", 0) or 0)
        if count - cached:
            metrics.JOBS_SUBMITTED.labels("decompose", "batch").inc(count - cached)
        if cached:
            metrics.JOBS_SUBMITTED.labels("decompose", "cached").inc(cached)
