"""Thin Celery tasks and the worker's lifecycle hooks. Each task decodes its message and calls a plain
function (`worker.decompose.run_job`) that the tests also exercise directly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery, signals
from celery.exceptions import Retry

from layerq import dispatch
from layerq.messages import DECOMPOSE_TASK
from layerq.queues import DECOMPOSE_QUEUE, EDIT_QUEUE, EDIT_TASK, TASK_OF_QUEUE
from worker import runtime

log = logging.getLogger(__name__)

# task id → broker delivery tag of the message being run (solo pool: at most a prefetched few).
_delivery_tags: dict[str, str] = {}
# A task's home queue, when a message carries no routing key (every memory class's decompose queue
# runs the same task: the largest class's plain `decompose` queue is the default).
TASK_QUEUES = {DECOMPOSE_TASK: DECOMPOSE_QUEUE, EDIT_TASK: EDIT_QUEUE}


# The code of a job failed by an exception that escaped its task: a bug, like any unexpected
# exception inside `run_job` (which ends its job with the same code).
ESCAPED_CODE = "internal"


@contextmanager
def failing_job_on_escape(message: Any) -> Iterator[None]:
    """End the message's job `failed` if an exception escapes its task (an import or setup error
    before `run_job`, a fault `run_job` does not expect), then re-raise it for Celery to log.

    Celery acks a task that raised (acks_late only redelivers on a lost worker), so without this the
    job would stay `queued` or `running` with no message left to run it. A retry (`Retry`) is not
    an escape: the job gets a new message."""
    try:
        yield
    except Retry:
        raise
    except Exception as exc:
        job_id = message.get("job_id") if isinstance(message, dict) else None
        if job_id:
            _fail_escaped(job_id, f"worker error: {type(exc).__name__}: {exc}")
        raise


def _fail_escaped(job_id: str, message: str) -> None:
    try:
        rt = runtime.current()
        try:
            from worker.decompose import end_failed
        except Exception:  # the escape may be this very import: fail the record alone
            rt.jobs.fail(job_id, ESCAPED_CODE, message)
        else:
            end_failed(rt, job_id, ESCAPED_CODE, message, {})
    except Exception:  # the store is out too, or the job already ended: nothing more to do here
        log.warning("job %s: could not mark it failed after an escaped error", job_id, exc_info=True)


def register(app: Celery) -> None:
    @app.task(name=DECOMPOSE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def decompose(self, message: dict) -> str:
        with failing_job_on_escape(message):
            return _decompose(self, message)

    def _decompose(self, message: dict) -> str:
        from worker.decompose import TransientJobError, give_up, run_job

        rt = runtime.current()
        tag = _delivery_tags.pop(self.request.id, None)
        try:
            return run_job(rt, message, delivery_tag=tag, retries=self.request.retries)
        except TransientJobError as exc:
            if self.request.retries >= rt.settings.max_transient_retries:
                return give_up(rt, message, exc)
            # Back off and try again; a retry is a new message, and begin_attempt allows one more
            # delivery per retry so retries are not mistaken for a poison job.
            countdown = rt.settings.retry_backoff_s * 2**self.request.retries
            log.warning("job %s: transient fault (%s); retry in %.0f s", message.get("job_id"), exc, countdown)
            raise self.retry(exc=exc, countdown=countdown, max_retries=rt.settings.max_transient_retries)

    @app.task(name=EDIT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
    def edit(self, message: dict) -> str:
        with failing_job_on_escape(message):
            return _edit(self, message)

    def _edit(self, message: dict) -> str:
        from worker.decompose import TransientJobError, give_up, run_job
        from worker.edit_job import EDIT

        rt = runtime.current()
        tag = _delivery_tags.pop(self.request.id, None)
        try:
            return run_job(rt, message, delivery_tag=tag, retries=self.request.retries, kind=EDIT)
        except TransientJobError as exc:
            if self.request.retries >= rt.settings.max_transient_retries:
                return give_up(rt, message, exc)
            countdown = rt.settings.retry_backoff_s * 2**self.request.retries
            raise self.retry(exc=exc, countdown=countdown, max_retries=rt.settings.max_transient_retries)

    @signals.task_received.connect(weak=False)
    def remember_delivery_tag(request=None, **_kwargs) -> None:
        # Celery does not hand a task its broker delivery tag; the liveness reaper needs it to put
        # the message of a dead worker back, so it is taken from the received message here.
        message = getattr(request, "message", None)
        # Only decompose jobs are reaped; recording others (webhooks) would grow the map forever.
        if message is not None and getattr(request, "name", None) in (DECOMPOSE_TASK, EDIT_TASK):
            _delivery_tags[request.id] = message.delivery_tag

    @signals.task_prerun.connect(weak=False)
    def admit_next(sender=None, task_id=None, **_kwargs) -> None:
        # A worker took a job's message: room on the broker for the next admitted job (fair
        # queues). The queue comes from the message's routing key: a decompose task may come from any
        # memory class's queue (decompose, decompose.48, ...), so the task's name alone does not say which.
        delivery = getattr(getattr(sender, "request", None), "delivery_info", None) or {}
        queue = delivery.get("routing_key") or TASK_QUEUES.get(getattr(sender, "name", ""))
        if queue in TASK_OF_QUEUE:  # admitted queues only (not webhooks, compose or combine)
            rt = runtime.current()
            rt.services.admission.taken(queue, task_id)
            dispatch.admit(rt.services, queue)

    @signals.worker_init.connect(weak=False)
    def start_runtime(sender=None, **_kwargs) -> None:
        # worker_init runs in the process that executes tasks under the solo pool, before the first
        # message is taken: the model loads once, and CUDA is never initialised before a fork.
        queues = set(app.conf.layerq_queues)
        runtime.start(app.conf.layerq_settings, app, queues, name=getattr(sender, "hostname", None),
                      memory=getattr(app.conf, "layerq_memory", None))

    @signals.worker_ready.connect(weak=False)
    def announce(sender=None, **_kwargs) -> None:
        # Ready means the model is loaded: only now does the worker count towards /healthz and ETAs.
        rt = runtime.current()
        if rt.liveness:
            rt.liveness.start()
        log.info("worker %s ready on %s", rt.name, ",".join(app.conf.layerq_queues))

    @signals.worker_shutdown.connect(weak=False)
    def leave(sender=None, **_kwargs) -> None:
        rt = runtime.current()
        if rt.liveness:
            rt.liveness.stop()
