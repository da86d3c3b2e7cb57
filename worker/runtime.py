"""What one worker process holds for its whole life: its `Services` (settings, stores, Celery app),
liveness and (on GPU queues) the loaded pipeline.

The pipeline is loaded once at worker start, before the worker takes its first message, so the first
job does not pay for the model load and a broken model fails the worker loudly instead of every job."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery

from layerq import dispatch, metrics
from layerq.config import Settings
from layerq.queues import DECOMPOSE_QUEUES, EDIT_QUEUE, GPU_QUEUES, LAYERSET_QUEUE
from storage.base import ObjectStore
from storage.jobs import JobStore
from storage.services import Services
from storage.stats import ServiceTimes
from worker.liveness import Liveness

if TYPE_CHECKING:
    from worker.memory_budget import WorkerMemory
    from worker.pipeline import DecomposePipeline

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    services: Services
    liveness: Liveness | None
    pipeline: "DecomposePipeline | Any | None"
    """The decompose pipeline, or on `edit` workers `QwenImageEditPlusPipeline`: one kind per worker."""
    name: str
    matte_model: Any = None
    """The `model` matte, loaded once on edit workers whose settings name a matte model."""
    memory: "WorkerMemory | None" = None
    """Decompose workers: the GPU memory budget and memory class (worker/memory_budget.py)."""

    # The stores a job uses most, by their short names.
    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def store(self) -> ObjectStore:
        return self.services.store

    @property
    def jobs(self) -> JobStore:
        return self.services.jobs

    @property
    def stats(self) -> ServiceTimes:
        return self.services.stats

    @property
    def app(self) -> Celery:
        return self.services.celery


_runtime: WorkerRuntime | None = None


def start(settings: Settings, app: Celery, queues: set[str], name: str | None = None,
          memory: "WorkerMemory | None" = None) -> WorkerRuntime:
    """Open the services and, for GPU queues, load the pipeline; idempotent within a process."""
    global _runtime
    if _runtime is not None:
        return _runtime
    pipeline = matte = None
    decompose_queues = [q for q in DECOMPOSE_QUEUES if q in queues]  # largest class first
    if decompose_queues and memory is None:
        from worker.memory_budget import worker_memory

        memory = worker_memory(settings)
    if EDIT_QUEUE in queues:
        if queues & GPU_QUEUES - {EDIT_QUEUE}:
            raise ValueError("a worker holds one pipeline kind: run `edit` workers apart from other GPU queues")
        pipeline, matte = _load_edit(settings)
    elif decompose_queues:
        from worker.pipeline import DecomposePipeline  # torch is imported only by GPU workers

        t0 = time.perf_counter()
        device = settings.device
        if settings.cfg_parallel_peer:  # rank 0 of a pair: both ranks see the pair's GPUs, rank r uses the r-th
            from worker.accel.cfg_parallel import pair_device

            device = pair_device(device, 0)
        pipeline = DecomposePipeline.load(
            settings.model, device=device, cache_dir=settings.model_cache_dir,
            speedups=settings.gpu_speedups, fast_captions=settings.fast_captions,
            warmup_buckets=settings.warmup_bucket_list, memory_gib=settings.gpu_memory_gib,
            # A CFG-parallel pair's follower runs bf16: its negative branch would not match a FP8 one.
            fp8_fast="off" if settings.cfg_parallel_peer else settings.fp8_fast,
        )
        if settings.cfg_parallel_peer:
            from worker.cfg_follower import connect_leader

            pipeline.cfg = connect_leader(settings, pipeline)
        load_s = time.perf_counter() - t0
        log.info("pipeline %s loaded in %.1f s", settings.model, load_s)
        metrics.MODEL_LOAD_SECONDS.labels(settings.model).set(load_s)
        metrics.track_gpu_memory()
    metrics.serve_worker_metrics(settings.worker_metrics_port)
    services = Services.open(settings, celery=app)
    # Unique per process, even when a restarted pod reuses its hostname: a dead worker's heartbeat
    # entry must never be refreshed by its successor, or its job would never be put back.
    name = f"{name or socket.gethostname()}#{os.getpid()}-{secrets.token_hex(3)}"
    # Every worker beats on one queue: GPU workers on theirs (for reaping and ETAs), CPU workers on
    # `cpu` (counted by /healthz, compose/combine ETAs); any of them sweeps every queue's unsent jobs.
    if pipeline:
        edit = EDIT_QUEUE in queues
        live_on = [EDIT_QUEUE] if edit else decompose_queues
        # What /healthz shows of this worker, published with every heartbeat: kind, queues, memory
        # class and budget, and the memory plan its pipeline runs under.
        info = {"kind": "edit" if edit else "decompose", "queues": live_on,
                **(memory.describe() if memory and not edit else {})}
        if plan := getattr(pipeline, "memory_plan", None):
            info["memory_plan"] = plan
        log.info("worker %s: %s", name, info)
    else:
        live_on, info = [LAYERSET_QUEUE], {"kind": "cpu", "queues": [LAYERSET_QUEUE]}
    liveness = Liveness(services.jobs, services.workers, app, live_on, name,
                        settings.worker_heartbeat_s, settings.enqueue_grace_s,
                        on_beat=lambda: dispatch.sweep(services), info=info)
    _runtime = WorkerRuntime(services=services, liveness=liveness, pipeline=pipeline, name=name, matte_model=matte,
                             memory=memory if decompose_queues else None)
    return _runtime


def _load_edit(settings: Settings) -> tuple[Any, Any]:
    """The edit pipeline and, when configured, the `model` matte (both loaded before the first job)."""
    from pathlib import Path

    from worker.edit import load_edit_pipeline

    t0 = time.perf_counter()
    cache = Path(settings.model_cache_dir)
    pipeline = load_edit_pipeline(settings.edit_model, device=settings.device, cache_dir=cache,
                                  speedups=settings.gpu_speedups)
    matte = None
    if settings.matte_model:
        from worker.matte import get_matte
        from worker.models.segmenter import resolve_segmenter
        from worker.pipeline import resolve_device

        device = str(resolve_device(settings.device)[0])
        matte = get_matte("model", model=resolve_segmenter(settings.matte_model, cache), device=device)
    load_s = time.perf_counter() - t0
    log.info("edit pipeline %s loaded in %.1f s", settings.edit_model, load_s)
    metrics.MODEL_LOAD_SECONDS.labels(settings.edit_model).set(load_s)
    metrics.track_gpu_memory()
    return pipeline, matte


def current() -> WorkerRuntime:
    if _runtime is None:
        raise RuntimeError("worker runtime not started (worker_init did not run)")
    return _runtime
