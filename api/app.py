"""The Flask app factory. `create_app()` builds settings once (defaults, environment, overrides) and
the services every request uses; gunicorn serves `api.app:create_app()`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from celery import Celery
from flask import Flask, current_app, jsonify

from api import contract, errors, observability
from api.body_deadline import BodyDeadline
from layerq.config import Settings
from layerq.logs import setup_logging
from storage.base import ObjectStore
from storage.factory import open_object_store
from storage.jobs import JobStore, connect
from storage.stats import ServiceTimes
from layerq.celery_app import make_celery

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    store: ObjectStore
    jobs: JobStore
    stats: ServiceTimes
    celery: Celery


def services() -> Services:
    return current_app.extensions["layerq"]


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or Settings.from_env(**overrides)
    app = Flask("layerq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    client = connect(settings.redis_url)
    app.extensions["layerq"] = Services(
        settings=settings,
        store=open_object_store(settings),
        jobs=JobStore(client, key_prefix=settings.key_prefix, ttl_s=settings.job_ttl_s),
        stats=ServiceTimes(client, settings.key_prefix),
        celery=make_celery(settings),
    )

    from api import batches, files, jobs, openapi, uploads, web

    app.register_blueprint(jobs.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(uploads.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(web.bp)
    errors.register(app)
    contract.register(app)
    observability.register(app, app.extensions["layerq"].jobs.queued_count)
    if settings.log_format == "json":
        setup_logging("json")
    # Read each body to its end under a deadline before the app runs (see api/body_deadline.py).
    app.wsgi_app = BodyDeadline(app.wsgi_app, settings.request_body_timeout_s, settings.max_upload_bytes)

    @app.get("/livez")
    def livez():
        # Liveness only: a Redis or S3 outage must not get every API pod restarted.
        return jsonify({"status": "ok"})

    @app.get("/healthz")
    def healthz():
        svc = services()
        checks: dict[str, str] = {}
        for name, probe in (("redis", svc.jobs.r.ping), ("storage", svc.store.check)):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # report, don't raise: this is the probe
                checks[name] = f"error: {exc}"
        ok = all(v == "ok" for v in checks.values())
        workers = svc.jobs.live_workers("decompose") if checks["redis"] == "ok" else 0
        return jsonify({"status": "ok" if ok else "degraded", "checks": checks, "workers": workers}), (
            200 if ok else 503
        )

    return app
