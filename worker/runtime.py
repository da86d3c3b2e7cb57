"""What one worker process holds for its whole life: settings, stores and the loaded pipeline.

Loaded once at worker start (before the worker takes its first message), so the first job does not
pay for the model load and a broken model fails the worker loudly instead of every job quietly."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerq.config import Settings
from storage.base import ObjectStore
from storage.factory import open_object_store
from storage.jobs import JobStore

if TYPE_CHECKING:
    from worker.pipeline import DecomposePipeline

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    store: ObjectStore
    jobs: JobStore
    pipeline: "DecomposePipeline"
    name: str


_runtime: WorkerRuntime | None = None


def start(settings: Settings, name: str | None = None) -> WorkerRuntime:
    """Open the stores and load the pipeline; idempotent within a process."""
    global _runtime
    if _runtime is not None:
        return _runtime
    from worker.pipeline import DecomposePipeline  # torch is imported only in worker processes

    t0 = time.perf_counter()
    pipeline = DecomposePipeline.load(
        settings.model, device=settings.device, cache_dir=settings.model_cache_dir
    )
    log.info("pipeline %s loaded in %.1f s", settings.model, time.perf_counter() - t0)
    _runtime = WorkerRuntime(
        settings=settings,
        store=open_object_store(settings),
        jobs=JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix, ttl_s=settings.job_ttl_s),
        pipeline=pipeline,
        name=name or f"{socket.gethostname()}:{id(pipeline):x}",
    )
    return _runtime


def current() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (worker_init did not run)")
    return _runtime
