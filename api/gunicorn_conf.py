"""gunicorn hooks for `layerq api` (passed as `--config python:api.gunicorn_conf`)."""

from __future__ import annotations

import os
import shutil


def child_exit(server, worker) -> None:
    """A gunicorn process ended: its live gauges must no longer count (prometheus-client's
    multiprocess mode keeps its counters and histograms, which stay correct totals)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """The private metrics directory `layerq api` made is removed with the server."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.environ.get("LAYERQ_OWNS_METRICS_DIR") == "1":
        shutil.rmtree(path, ignore_errors=True)
