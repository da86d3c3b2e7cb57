"""GPU memory classes and the fit table: which decompose jobs a worker with a given memory budget can
run without running out of memory, and which class's queue the API sends each job to (issue 17).

Torch-free on purpose: the API routes by it, and `layerq worker` derives its queues from it before
any model loads. How a worker of a class actually runs a job (full residency, blocks streamed,
text encoder off the GPU between prompts) is the memory plan's business (`worker/memory_plan.py`);
this module only promises which jobs fit, conservatively, and the plan must keep that promise: a
worker of class C must hold back `need_gib(job)` for any job this table lets C run.

## The formula

A job's GPU memory need is the larger of its denoise-and-decode need and, when it auto-captions,
its caption need:

    tokens         = (layers + 1) × (resolution / 16)²           image tokens of one transformer call
    denoise_need   = CONTEXT_GIB + FRAGMENTATION × (STREAM_WORKING_SET_GIB + ACTIVATION_GIB_PER_KTOKEN × tokens / 1000)
    caption_need   = CONTEXT_GIB + TEXT_ENCODER_GIB + FRAGMENTATION × CAPTION_ACTIVATION_GIB

A class fits a job when the need is at most the class's floor (the smallest card in the class).
This is the *least* a job needs (every transformer block streamed); a plan that keeps more of the
model resident needs more, and is the plan's to size within the budget.

Sources of the constants (full-size synthetic model, diffusers 0.42.1, bf16; BENCHMARKS.md and
issue 17):
- Full residency: 53.8 GiB of weights, peaking at 60.3 GiB allocated (62.5 reserved) at 640 / 4
  layers (8,000 tokens) and 70.4 GiB allocated (75.5 reserved) at 1024 / 4 layers (20,480 tokens).
  Everything above the weights grows with the tokens: 6.5 GiB / 8.0 k and 16.6 GiB / 20.48 k are
  0.8125 and 0.811 GiB per 1,000 tokens, so one constant fits both (the peak is in the VAE decode of
  the layers + 1 frames, which scales with the same count).
- Everything streamed (diffusers group offloading, transformer block-level, text encoder
  leaf-level), 640 / 4: 6.7 GiB allocated, 10.0 reserved: reserved / allocated = 1.49, hence the
  1.5 fragmentation factor (1.31–1.34 at full residency). The working set of two 20.4 B / 60-block
  transformer blocks in flight (0.63 GiB each in bf16) plus the VAE is 1.5 GiB; with the activation
  term that predicts 12.0 GiB reserved at 640 / 4 against 10.0 measured, so the formula errs high.
- The text encoder (Qwen2.5-VL-7B, 8.29 B parameters) is 15.5 GiB in bf16. An auto-caption runs it
  for up to 512 decoding steps; streamed, each step would copy all of it (~0.3 s a step at the
  measured 51.5 GB/s), so a plan holds it on the GPU while captioning. Its prefill and KV cache
  (1,168 + 512 tokens) are a few hundred MiB; 2 GiB covers them and the vision tower.
- CUDA context and allocator bookkeeping outside PyTorch's counters: about 0.5–1 GiB; 1 GiB.

gpu17's measurements at 46, 22 and 14 GiB replace these constants: change them here, and the API,
the workers and `tests/test_memory_classes.py` follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- constants of the formula (GiB); replace with measurements ---------------------------------
ACTIVATION_GIB_PER_KTOKEN = 0.8125
"""Peak memory above the resident weights per 1,000 image tokens (full residency, 640/4 and 1024/4)."""
STREAM_WORKING_SET_GIB = 1.5
"""Weights that must be on the GPU while everything else streams: two transformer blocks and the VAE."""
FRAGMENTATION = 1.5
"""Reserved / allocated memory of the caching allocator (1.49 measured with everything streamed)."""
CONTEXT_GIB = 1.0
"""CUDA context and memory outside PyTorch's allocator."""
TEXT_ENCODER_GIB = 15.5
"""Qwen2.5-VL-7B in bf16, on the GPU while it writes a caption."""
CAPTION_ACTIVATION_GIB = 2.0
"""Prefill, KV cache and vision tower of one auto-caption."""

RESOLUTIONS = (640, 1024)
LAYER_COUNTS = tuple(range(2, 11))


@dataclass(frozen=True)
class MemoryClass:
    """A kind of card by its memory: every card of the class has at least `floor_gib`."""

    name: str
    """The class's name, its nominal size in GB: `80`, `48`, `24`, `16`."""
    floor_gib: float
    """The smallest memory (GiB, as the driver reports it) of a card in the class; the fit table plans
    for it, so the whole class can run what it says."""
    cards: str
    """Examples, with the memory the driver reports."""

    @property
    def label(self) -> str:
        return f"{self.name} GB-class"


CLASSES: tuple[MemoryClass, ...] = (
    MemoryClass("80", 78.0, "A100 80GB (80.0 GiB), H100 (79.2-79.6), H200 (139.8), B200"),
    MemoryClass("48", 44.0, "L40S, L40, A40 (45.0 GiB), RTX A6000, RTX 6000 Ada (48.0)"),
    MemoryClass("24", 22.0, "RTX 4090, RTX 3090 (24.0 GiB), L4, A10, A10G (22.5)"),
    MemoryClass("16", 14.0, "V100 16GB (15.8 GiB), RTX 4080 (16.0), T4 (15.0)"),
)
"""Largest first. A card between two floors belongs to the smaller class (an A100 40GB is 24 GB-class)."""

BY_NAME = {c.name: c for c in CLASSES}
LARGEST = CLASSES[0]


def tokens(resolution: int, layers: int) -> int:
    """Image tokens of one transformer call: the layers plus the composite, 16 px per token side."""
    return (layers + 1) * (resolution // 16) ** 2


def denoise_need_gib(resolution: int, layers: int) -> float:
    return CONTEXT_GIB + FRAGMENTATION * (STREAM_WORKING_SET_GIB
                                          + ACTIVATION_GIB_PER_KTOKEN * tokens(resolution, layers) / 1000)


def caption_need_gib() -> float:
    return CONTEXT_GIB + TEXT_ENCODER_GIB + FRAGMENTATION * CAPTION_ACTIVATION_GIB


def need_gib(resolution: int, layers: int, auto_caption: bool) -> float:
    """The least GPU memory a job needs (see the module's formula)."""
    need = denoise_need_gib(resolution, layers)
    return max(need, caption_need_gib()) if auto_caption else need


def fits(memory_class: MemoryClass | str, resolution: int, layers: int, auto_caption: bool) -> bool:
    cls = BY_NAME[memory_class] if isinstance(memory_class, str) else memory_class
    return need_gib(resolution, layers, auto_caption) <= cls.floor_gib


def fit_table() -> list[dict[str, Any]]:
    """Every (resolution, layers, auto_caption) with its need and the classes that fit it (docs, tests)."""
    return [
        {"resolution": r, "layers": n, "auto_caption": c, "need_gib": round(need_gib(r, n, c), 2),
         "classes": [m.name for m in CLASSES if fits(m, r, n, c)]}
        for r in RESOLUTIONS for n in LAYER_COUNTS for c in (False, True)
    ]


# --- classes of workers and fleets -------------------------------------------------------------
def class_of_budget(budget_gib: float | None) -> MemoryClass | None:
    """The class of a worker with `budget_gib` of GPU memory: the largest whose floor it reaches.
    No budget (a CPU worker: memory is not the limit) is the largest class; a budget below every
    floor is None (it can run no decompose job)."""
    if budget_gib is None:
        return LARGEST
    for cls in CLASSES:
        if budget_gib >= cls.floor_gib:
            return cls
    return None


def parse_classes(spec: str) -> tuple[MemoryClass, ...]:
    """`LAYERQ_MEMORY_CLASSES` (`80,48`) as classes, largest first; raise ValueError naming a bad one."""
    names = [s.strip().removesuffix("GB").removesuffix("gb") for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise ValueError(f"LAYERQ_MEMORY_CLASSES={spec!r}: name classes from {', '.join(BY_NAME)}")
    return tuple(c for c in CLASSES if c.name in names)


def smallest_fitting(fleet: tuple[MemoryClass, ...], resolution: int, layers: int,
                     auto_caption: bool) -> MemoryClass | None:
    """The smallest class of `fleet` that fits the job, or None when none does."""
    for cls in reversed(CLASSES):
        if cls in fleet and fits(cls, resolution, layers, auto_caption):
            return cls
    return None


def served_classes(worker_class: MemoryClass) -> tuple[MemoryClass, ...]:
    """Classes whose jobs a worker of `worker_class` can run: its own and every smaller one."""
    return tuple(c for c in CLASSES if c.floor_gib <= worker_class.floor_gib)


def max_layers_that_fit(cls: MemoryClass, resolution: int, auto_caption: bool) -> int | None:
    fitting = [n for n in LAYER_COUNTS if fits(cls, resolution, n, auto_caption)]
    return max(fitting) if fitting else None
