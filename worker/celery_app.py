"""The worker's Celery app: the shared app (layerq.celery_app) plus the tasks and lifecycle hooks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import Celery

from layerq.celery_app import make_celery
from layerq.config import Settings
from layerq.queues import DECOMPOSE_QUEUE
from worker import reaper, tasks, webhooks
from worker.layersets import jobs as layerset_jobs

if TYPE_CHECKING:
    from worker.memory_budget import WorkerMemory


def make_worker_app(settings: Settings | None = None, queues: str = DECOMPOSE_QUEUE,
                    memory: "WorkerMemory | None" = None) -> Celery:
    """`queues` as the worker consumes them (`layerq worker` has expanded `decompose` by `memory`,
    the worker's GPU memory budget and class; worker/memory_budget.py)."""
    app = make_celery(settings)
    app.conf.layerq_queues = [q.strip() for q in queues.split(",") if q.strip()]
    app.conf.layerq_memory = memory
    tasks.register(app)
    webhooks.register(app)
    layerset_jobs.register(app)
    reaper.register(app)
    return app
