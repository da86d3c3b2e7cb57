"""A worker's GPU memory budget, its memory class, and the decompose queues that class serves.

`layerq worker` resolves these before Celery starts, so the worker subscribes to exactly the queues
whose jobs it can run (issue 17): `--queues decompose` (the default) means every decompose queue
of its class and the smaller classes; a class queue named explicitly (`decompose.48`) must be one of
those, or the worker refuses to start. torch is imported only to read a card's memory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from layerq.config import Settings
from layerq.memory_classes import CLASSES, MemoryClass, class_of_budget, parse_classes, served_classes
from layerq.queues import DECOMPOSE_QUEUE, DECOMPOSE_QUEUES, decompose_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerMemory:
    """What a worker knows about its GPU memory."""

    budget_gib: float | None
    """GPU memory it may use; None: not limited (a CPU worker)."""
    memory_class: MemoryClass | None
    """The class that budget reaches; None: below the smallest class."""

    def describe(self) -> dict[str, object]:
        """The heartbeat's fields (shown per worker in /healthz)."""
        return {"memory_class": self.memory_class.name if self.memory_class else None,
                "memory_budget_gib": None if self.budget_gib is None else round(self.budget_gib, 2)}


def card_memory_gib(settings: Settings) -> float | None:
    """The total memory of the card this process runs on, or None on CPU. Reading it initialises
    CUDA in this process, which is the one that runs the jobs (solo pool: nothing forks after)."""
    if settings.device == "cpu":
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def worker_memory(settings: Settings) -> WorkerMemory:
    """`LAYERQ_GPU_MEMORY_GIB` when set, else the card's total memory, else (CPU) unlimited; the class
    is `LAYERQ_MEMORY_CLASS` when declared, else the one that budget reaches."""
    budget = settings.gpu_memory_gib if settings.gpu_memory_gib > 0 else card_memory_gib(settings)
    if settings.memory_class:  # declared (LAYERQ_MEMORY_CLASS): routing trusts it over the budget
        return WorkerMemory(budget, parse_classes(settings.memory_class)[0])
    return WorkerMemory(budget, class_of_budget(budget))


def wants_decompose(requested: list[str]) -> bool:
    return any(q in DECOMPOSE_QUEUES for q in requested)


def resolve_queues(requested: list[str], memory: WorkerMemory, settings: Settings) -> list[str]:
    """The queues to consume: `decompose` expanded to the class's queues; explicit class queues checked.

    Raise ValueError (a message for the operator) when the worker cannot serve what it was asked to."""
    if not wants_decompose(requested):
        return requested
    cls = memory.memory_class
    if cls is None:
        smallest = CLASSES[-1]
        raise ValueError(f"GPU memory budget {memory.budget_gib:.1f} GiB is below the smallest memory class "
                         f"({smallest.label}, {smallest.floor_gib:g} GiB): this worker can run no decompose job")
    served = [decompose_queue(c) for c in served_classes(cls)]
    out: list[str] = []
    for queue in requested:
        if queue == DECOMPOSE_QUEUE:  # the family: every queue this class serves
            out += [q for q in served if q not in out]
        elif queue in DECOMPOSE_QUEUES and queue not in served:
            raise ValueError(f"--queues {queue}: a {cls.label} worker ({memory.budget_gib:.1f} GiB) cannot run "
                             f"that queue's jobs; it serves {', '.join(served)}")
        elif queue not in out:
            out.append(queue)
    fleet = settings.fleet_memory_classes
    if not any(c in fleet for c in served_classes(cls)):
        log.warning("this %s worker serves %s, but LAYERQ_MEMORY_CLASSES=%s routes no job there: add %s to it "
                    "(on the API) for this worker to get jobs", cls.label, ",".join(out), settings.memory_classes,
                    cls.name)
    return out
