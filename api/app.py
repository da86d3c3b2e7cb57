"""The Flask app factory. `create_app()` builds settings once (defaults, environment, overrides) and
opens the services every request uses (`Services.open`); gunicorn serves `api.app:create_app()`.
Blueprints reach the services through `api.context`, never through this module."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify

from api import (
    auth, batches, contract, edits, errors, events, files, jobs, layersets, limits, observability, openapi, uploads,
    web,
)
from api.body_deadline import BodyDeadline
from api.context import EXTENSION, services
from layerq.config import Settings
from layerq.logs import setup_logging
from layerq.queues import DECOMPOSE_QUEUES, EDIT_QUEUE, LAYERSET_QUEUE
from storage.services import Services

log = logging.getLogger(__name__)

GPU_QUEUE_ORDER = (*DECOMPOSE_QUEUES, EDIT_QUEUE)


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or Settings.from_env(**overrides)
    settings.fleet_memory_classes  # a bad LAYERQ_MEMORY_CLASSES stops the API at start, not per request
    app = Flask("layerq")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = Services.open(settings)

    app.register_blueprint(jobs.bp)
    app.register_blueprint(batches.bp)
    app.register_blueprint(layersets.bp)
    app.register_blueprint(edits.bp)
    app.register_blueprint(uploads.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(web.bp)
    app.register_blueprint(events.bp)
    errors.register(app)
    contract.register(app)
    auth.register(app, settings, app.extensions[EXTENSION].api_keys)  # before the limiter: it keys on the caller
    limits.register(app, settings)
    observability.register(app, app.extensions[EXTENSION].jobs.queued_by_priority)
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
        for name, probe in (("redis", svc.jobs.ping), ("storage", svc.store.check)):
            try:
                probe()
                checks[name] = "ok"
            except Exception as exc:  # report, don't raise: this is the probe
                checks[name] = f"error: {exc}"
        ok = all(v == "ok" for v in checks.values())
        workers, by_queue, live = 0, {"decompose": 0, EDIT_QUEUE: 0, LAYERSET_QUEUE: 0}, []
        if checks["redis"] == "ok":
            # `workers`: decompose workers of every memory class, each once (what probes and `layerq
            # up` read); `workers_by_queue`: live workers of each kind (decompose, edit, cpu);
            # `live_workers`: every GPU worker with what its heartbeat says (kind, queues, memory
            # class and budget, memory plan).
            workers = svc.workers.live_count_on(DECOMPOSE_QUEUES)
            by_queue = {"decompose": workers, EDIT_QUEUE: svc.workers.live_count(EDIT_QUEUE),
                        LAYERSET_QUEUE: svc.workers.live_count(LAYERSET_QUEUE)}
            names = svc.workers.live_names(GPU_QUEUE_ORDER)
            live = [{**info, "name": name} for name, info in zip(names, svc.workers.descriptions(names))]
        return jsonify({"status": "ok" if ok else "degraded", "checks": checks, "workers": workers,
                        "workers_by_queue": by_queue,
                        "memory_classes": [c.name for c in svc.settings.fleet_memory_classes],
                        "live_workers": live}), (200 if ok else 503)

    return app
