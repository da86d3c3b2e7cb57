"""The worker's Celery app: the shared app (layerq.celery_app) plus the tasks and lifecycle hooks."""

from __future__ import annotations

from celery import Celery

from layerq.celery_app import make_celery
from layerq.config import Settings
from layerq.queues import DECOMPOSE_QUEUE
from worker import reaper, tasks, webhooks
from worker.layersets import jobs as layerset_jobs


def make_worker_app(settings: Settings | None = None, queues: str = DECOMPOSE_QUEUE) -> Celery:
    app = make_celery(settings)
    app.conf.layerq_queues = [q.strip() for q in queues.split(",") if q.strip()]
    tasks.register(app)
    webhooks.register(app)
    layerset_jobs.register(app)
    reaper.register(app)
    return app
