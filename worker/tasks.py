"""Thin Celery tasks and the worker's lifecycle hooks. Each task decodes its message and calls a plain
function (`worker.decompose.run_job`) that the tests also exercise directly."""

from __future__ import annotations

import logging
import threading

from celery import Celery, signals

from layerq.messages import DECOMPOSE_QUEUE, DECOMPOSE_TASK
from worker import runtime

log = logging.getLogger(__name__)


def register(app: Celery) -> None:
    @app.task(name=DECOMPOSE_TASK, acks_late=True, reject_on_worker_lost=True)
    def decompose(message: dict) -> str:
        from worker.decompose import run_job

        return run_job(runtime.current(), message)

    @signals.worker_init.connect(weak=False)
    def load_pipeline(sender=None, **_kwargs) -> None:
        # worker_init runs in the process that executes tasks under the solo pool, before the first
        # message is taken: the model loads once, and CUDA is never initialised before a fork.
        settings = app.conf.layerq_settings
        name = getattr(sender, "hostname", None)
        runtime.start(settings, name=name)

    @signals.worker_ready.connect(weak=False)
    def announce(sender=None, **_kwargs) -> None:
        # Ready means the model is loaded: only now does the worker count towards /healthz and ETAs.
        rt = runtime.current()
        rt.jobs.worker_heartbeat(DECOMPOSE_QUEUE, rt.name)
        threading.Thread(target=_heartbeat, args=(rt,), name="layerq-heartbeat", daemon=True).start()
        log.info("worker %s ready on queue %s", rt.name, DECOMPOSE_QUEUE)

    @signals.worker_shutdown.connect(weak=False)
    def leave(sender=None, **_kwargs) -> None:
        try:
            rt = runtime.current()
            rt.jobs.worker_gone(DECOMPOSE_QUEUE, rt.name)
        except Exception:  # shutting down anyway; Redis may be gone
            pass


HEARTBEAT_INTERVAL_S = 15.0


def _heartbeat(rt: runtime.WorkerRuntime) -> None:
    stop = threading.Event()
    while not stop.wait(HEARTBEAT_INTERVAL_S):
        try:
            rt.jobs.worker_heartbeat(DECOMPOSE_QUEUE, rt.name)
        except Exception:  # Redis briefly away: the next beat retries
            log.warning("heartbeat failed", exc_info=True)
