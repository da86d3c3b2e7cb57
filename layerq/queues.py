"""Queue and task names, in one place: the API sends to them, the workers consume them, `layerq`
starts workers on them. A new job kind adds its queue and task here."""

from __future__ import annotations

DECOMPOSE_QUEUE = "decompose"
"""Decompose jobs; consumed by GPU workers (solo pool, one per GPU)."""
DECOMPOSE_TASK = "layerq.decompose"

EDIT_QUEUE = "edit"
"""Edit jobs; consumed by GPU workers that hold the edit pipeline (a worker holds one pipeline kind)."""
EDIT_TASK = "layerq.edit"

WEBHOOK_QUEUE = "cpu"
"""Webhook deliveries; consumed by CPU workers (thread pool, no model)."""
WEBHOOK_TASK = "layerq.webhook"

LAYERSET_QUEUE = WEBHOOK_QUEUE
"""Compose and combine jobs (layer sets built from layer sets or uploads): CPU work, no model."""
COMPOSE_TASK = "layerq.compose"
COMBINE_TASK = "layerq.combine"

GPU_QUEUES = frozenset({DECOMPOSE_QUEUE, EDIT_QUEUE})
"""Queues whose workers load the model and take part in liveness (heartbeats, reaping)."""

TASK_OF_QUEUE: dict[str, str] = {DECOMPOSE_QUEUE: DECOMPOSE_TASK, EDIT_QUEUE: EDIT_TASK}
"""The job queues whose jobs are sent from their records, and the task each is sent as: the API's
enqueue, the unsent-jobs sweeper and fair admission (layerq/dispatch.py) all use it. The `cpu`
queue's compose and combine jobs are not here: their messages carry more than the record (the
source's layer keys), so they are sent once, by their route (docs/decisions.md, "Fair admission
and the cpu queue")."""
TASK_OF_KIND = {"decompose": DECOMPOSE_TASK, "edit": EDIT_TASK, "compose": COMPOSE_TASK, "combine": COMBINE_TASK}
"""The task a job's message is sent as, by the job's kind (compose and combine share a queue)."""

JOB_QUEUES = (DECOMPOSE_QUEUE, EDIT_QUEUE, LAYERSET_QUEUE)
"""Queues that carry jobs (records with a queue position, swept for unsent messages): every job kind's."""
