"""Queue and task names, in one place: the API sends to them, the workers consume them, `layerq`
starts workers on them. A new job kind adds its queue and task here."""

from __future__ import annotations

from layerq.memory_classes import CLASSES, LARGEST, MemoryClass

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


# --- decompose queues by GPU memory class (issue 17; classes in layerq/memory_classes.py) ------
# The largest class keeps the plain `decompose` queue: every worker before memory classes was one,
# so messages an older API sent still reach a worker that can run them. Smaller classes' queues are
# `decompose.48`, `decompose.24`, `decompose.16`; a worker consumes its class's queue and every
# smaller class's, so a big worker also serves small jobs and a small one never sees a big job.
DECOMPOSE_CLASS_QUEUES = {c.name: DECOMPOSE_QUEUE if c is LARGEST else f"{DECOMPOSE_QUEUE}.{c.name}"
                          for c in CLASSES}
"""Memory class name → the queue of the decompose jobs that class is the smallest fit for."""
DECOMPOSE_QUEUES = tuple(DECOMPOSE_CLASS_QUEUES.values())
"""Every decompose queue, largest class first."""


def decompose_queue(memory_class: MemoryClass) -> str:
    return DECOMPOSE_CLASS_QUEUES[memory_class.name]


GPU_QUEUES = frozenset({*DECOMPOSE_QUEUES, EDIT_QUEUE})
"""Queues whose workers load the model and take part in liveness (heartbeats, reaping)."""

TASK_OF_QUEUE = {**{q: DECOMPOSE_TASK for q in DECOMPOSE_QUEUES}, EDIT_QUEUE: EDIT_TASK}
"""The GPU job queues (every memory class's decompose queue, and edit) and the task each is sent as:
fair admission (layerq/dispatch.py) admits jobs to these. The `cpu` queue's compose and combine jobs
are not admitted: they are sent at once (docs/decisions.md, "Fair admission and the cpu queue")."""

TASK_OF_KIND = {"decompose": DECOMPOSE_TASK, "edit": EDIT_TASK, "compose": COMPOSE_TASK, "combine": COMBINE_TASK}
"""The task a job's message is sent as, by the job's kind (compose and combine share a queue)."""

JOB_QUEUES = (*DECOMPOSE_QUEUES, EDIT_QUEUE, LAYERSET_QUEUE)
"""Queues that carry jobs (records with a queue position, swept for unsent messages): every job kind's."""
