"""The `quality` job parameter: how much of the authors' computation a job may skip.

* `exact` (default): the authors' function; only lossless speed-ups (bf16 rounding aside).
* `balanced`: step caching. Inside the middle 60 % of the schedule every second step reuses each
  branch's (prompt / negative prompt) previous transformer output: 30 % fewer transformer calls at 50
  steps.
* `fast`: 60 % of the requested steps, with `balanced`'s step caching on top (at 50 steps: 30 steps,
  42 transformer calls instead of 100), and FP8 transformer weights on workers whose memory plan has
  them (`worker/accel/fp8.py`; /healthz shows each worker's `fast_jobs`).

Both lossy modes change the output. Their error against `exact` was measured on random weights
(bench/GPU_NOTES.md), whose predictions change little from step to step: that understates the cost on
the real model, where it must be judged on real images before a mode is relied on.
"""

from __future__ import annotations

from dataclasses import dataclass

from .step_cache import StepCache

QUALITIES = ("exact", "balanced", "fast")


@dataclass(frozen=True)
class QualityMode:
    name: str
    step_fraction: float = 1.0
    cache_interval: int = 1  # 1: no step caching
    cache_window: tuple[float, float] = (0.2, 0.8)
    fp8_weights: bool = False  # the worker's FP8 copy of the transformer, where it has one

    def steps(self, requested: int) -> int:
        """Denoising steps to run for `requested` (never below the scheduler's minimum of 2)."""
        return max(2, round(requested * self.step_fraction))

    def step_cache(self) -> StepCache | None:
        return StepCache(self.cache_interval, self.cache_window) if self.cache_interval > 1 else None

    @property
    def lossy(self) -> bool:
        return self.step_fraction != 1.0 or self.cache_interval > 1 or self.fp8_weights


MODES = {
    "exact": QualityMode("exact"),
    "balanced": QualityMode("balanced", cache_interval=2),
    "fast": QualityMode("fast", step_fraction=0.6, cache_interval=2, fp8_weights=True),
}


def mode(name: str) -> QualityMode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"quality must be one of {', '.join(QUALITIES)}, got {name!r}") from None
