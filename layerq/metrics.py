"""Every Prometheus metric layerq exports, in one place (names, labels, buckets).

The API serves them on `GET /metrics`; under several gunicorn processes prometheus-client's
multiprocess mode adds up every process's values (`layerq api` sets PROMETHEUS_MULTIPROC_DIR and a
child_exit hook clears a dead process's files, see api/gunicorn_conf.py). Each worker process serves
its own on `LAYERQ_WORKER_METRICS_PORT` (the supervisor gives each GPU's worker the next port).
`FAMILIES` holds every metric family name (the Grafana dashboard's test checks against it).
Queue depth is read from Redis when scraped, so any API process reports the same number.
Imports no torch: the API uses this module too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

log = logging.getLogger(__name__)

# Stage durations run from milliseconds (storage writes) to an hour (a job at its time limit).
STAGE_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# --- API ----------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("layerq_http_requests_total", "HTTP requests answered by the API",
                        ["method", "route", "status"])
HTTP_SECONDS = Histogram("layerq_http_request_duration_seconds", "Time to answer an HTTP request",
                         ["method", "route"], buckets=HTTP_BUCKETS_S)
JOBS_SUBMITTED = Counter("layerq_jobs_submitted_total", "Jobs accepted by the API (cached: answered from the result cache)",
                         ["kind", "source"])

# --- workers --------------------------------------------------------------------------------------
JOBS = Counter("layerq_jobs_total", "Jobs a worker started (running) or ended (succeeded, failed, canceled)",
               ["kind", "status"])
STAGE_SECONDS = Histogram("layerq_job_stage_duration_seconds", "Wall-clock time of each stage of a succeeded job",
                          ["kind", "stage"], buckets=STAGE_BUCKETS_S)
MODEL_LOAD_SECONDS = Gauge("layerq_model_load_seconds", "Time this worker took to load its pipeline", ["model"])
GPU_MEMORY_BYTES = Gauge("layerq_gpu_memory_bytes", "GPU memory of this worker's process, from torch.cuda",
                         ["kind"])
WEBHOOK_DELIVERIES = Counter("layerq_webhook_deliveries_total", "Webhook delivery attempts by outcome",
                             ["event", "outcome"])

CAPTIONS_AHEAD = Counter(
    "layerq_captions_ahead_total",
    "Auto-captions of waiting jobs written ahead (written; not_queued: the job left the queue meanwhile), "
    "used by the job's own run (used), and waiting jobs left out of a look-ahead (missing, fault, slow)",
    ["outcome"])

QUEUE_DEPTH = "layerq_queue_depth"  # collected from Redis at scrape time (QueueDepth below)

FAMILIES = {m._name for m in (HTTP_REQUESTS, HTTP_SECONDS, JOBS_SUBMITTED, JOBS, STAGE_SECONDS, MODEL_LOAD_SECONDS,
                               GPU_MEMORY_BYTES, WEBHOOK_DELIVERIES, CAPTIONS_AHEAD)} | {QUEUE_DEPTH}


class QueueDepth:
    """`layerq_queue_depth{queue,priority}`: jobs waiting in each queue by priority, read from Redis on
    every scrape (so every API process reports the same, with no per-process state to add up).
    `sum by (queue)` is the depth of a queue."""

    def __init__(self, count: Callable[[str], dict[str, int]], queues: tuple[str, ...] = ("decompose",)) -> None:
        self.count, self.queues = count, queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(QUEUE_DEPTH, "Jobs queued and not yet started, by queue and priority "
                                   "(none: jobs without one; uncounted: beyond the scan bound)",
                                   labels=["queue", "priority"])
        for queue in self.queues:
            try:
                by_priority = self.count(queue)
            except Exception:  # Redis down: /healthz says so; a scrape should still answer
                log.warning("queue depth of %s unavailable", queue, exc_info=True)
                continue
            # The admitted priorities always appear (0 too), so a panel shows a line, not a gap.
            for priority in sorted(set(by_priority) | {"interactive", "bulk"}):
                family.add_metric([queue, priority], by_priority.get(priority, 0))
        yield family


def exposition(*extra: Any) -> bytes:
    """The text exposition of this process (or, in multiprocess mode, of all API processes) plus
    `extra` collectors."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
        body = b""
    else:
        from prometheus_client import REGISTRY

        body = generate_latest(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return body + generate_latest(registry)


def observe_stages(kind: str, timings: dict[str, float]) -> None:
    for stage, seconds in timings.items():
        STAGE_SECONDS.labels(kind, stage).observe(seconds)


def serve_worker_metrics(port: int, tries: int = 16) -> int | None:
    """Start this worker's exporter on `port`, or on the next free port above it when another process
    on the host holds it (`layerq up` runs a GPU and a CPU worker side by side; deployments give each
    process its own port or network namespace). Returns the port, or None: metrics are not worth a
    worker, so failing to serve them is logged, not fatal."""
    if port <= 0:
        return None
    for candidate in range(port, port + tries):
        try:
            start_http_server(candidate)
        except OSError:
            continue
        log.info("metrics on :%d/metrics", candidate)
        return candidate
    log.warning("metrics exporter not started: ports %d-%d are taken", port, port + tries - 1)
    return None


def track_gpu_memory() -> None:
    """Report torch's view of this process's GPU memory on every scrape (no-op without CUDA)."""
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available() or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return  # set_function is unavailable in multiprocess mode
    GPU_MEMORY_BYTES.labels("allocated").set_function(torch.cuda.memory_allocated)
    GPU_MEMORY_BYTES.labels("reserved").set_function(torch.cuda.memory_reserved)
    GPU_MEMORY_BYTES.labels("peak_allocated").set_function(torch.cuda.max_memory_allocated)
