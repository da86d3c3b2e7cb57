"""The result reaper: a thread in every CPU worker (`layerq worker --queues cpu`) that deletes the
objects of jobs whose retention has passed (storage/retention.py decides what is due).

A loop in the CPU worker rather than a Celery beat schedule: beat is one more process to deploy and
keep single, while CPU workers already run everywhere layerq runs (`layerq up`, compose, the Helm-less
Kubernetes files). With several CPU workers a Redis lock lets one of them reap per pass; a pass
deletes at most `reap_batch` jobs, then passes repeat at once while work is left, so a backlog
drains in bounded steps without one long call. The bucket lifecycle rule stays the backstop for
anything the reaper never sees (a deployment that runs no CPU worker)."""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import Celery, signals

from layerq.config import Settings
from layerq.queues import WEBHOOK_QUEUE
from storage.retention import ReapReport
from storage.services import Services

log = logging.getLogger(__name__)


def reap_once(services: Services, holder: str = "") -> ReapReport:
    """One bounded pass, under the lock (a pass another worker holds the lock for returns empty)."""
    settings = services.settings
    retention = services.jobs.retention
    holder = holder or f"{socket.gethostname()}#{os.getpid()}"
    if not retention.lock(holder, ttl_s=max(60.0, settings.reap_interval_s * 2)):
        return ReapReport()
    try:
        report = retention.reap(services.store, limit=settings.reap_batch)
    finally:
        retention.unlock(holder)
    if report.jobs:
        log.info("reaper: deleted %d objects of %d expired jobs", report.objects, len(report.jobs))
    return report


class ResultReaper:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="layerq-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        interval = self.services.settings.reap_interval_s
        while not self._stop.is_set():
            try:
                report = reap_once(self.services)
                if len(report.jobs) >= self.services.settings.reap_batch:
                    continue  # a full batch: more may be due, go on at once
            except Exception:  # Redis or S3 out: try again next pass, never kill the worker
                log.warning("reaper pass failed", exc_info=True)
            self._stop.wait(interval)


_reaper: ResultReaper | None = None


def register(app: Celery) -> None:
    @signals.worker_ready.connect(weak=False)
    def start_reaper(sender=None, **_kwargs) -> None:
        global _reaper
        settings: Settings = app.conf.layerq_settings
        if WEBHOOK_QUEUE not in app.conf.layerq_queues or settings.reap_interval_s <= 0 or _reaper:
            return
        _reaper = ResultReaper(Services.open(settings, celery=app))
        _reaper.start()

    @signals.worker_shutdown.connect(weak=False)
    def stop_reaper(sender=None, **_kwargs) -> None:
        if _reaper is not None:
            _reaper.stop()
