"""Queue and task names, in one place: the API sends to them, the workers consume them, `layerq`
starts workers on them. A new job kind adds its queue and task here."""

from __future__ import annotations

DECOMPOSE_QUEUE = "decompose"
"""Decompose jobs; consumed by GPU workers (solo pool, one per GPU)."""
DECOMPOSE_TASK = "layerq.decompose"

WEBHOOK_QUEUE = "cpu"
"""Webhook deliveries; consumed by CPU workers (thread pool, no model)."""
WEBHOOK_TASK = "layerq.webhook"

GPU_QUEUES = frozenset({DECOMPOSE_QUEUE})
"""Queues whose workers load the model and take part in liveness (heartbeats, reaping)."""

QUEUE_TASKS: dict[str, str] = {DECOMPOSE_QUEUE: DECOMPOSE_TASK}
"""The task that runs the jobs of each job queue: fair admission (layerq/dispatch.py) sends an
admitted job's message to it. A new job kind adds its queue here."""
