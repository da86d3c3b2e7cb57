"""Progress and stopping at a denoising step, the same for every pipeline a worker runs (decompose,
edit, the classic decomposer).

A job reports each step through `on_step(done, total)` and is asked `should_stop()` right after:
None goes on, "canceled" or "time_limit" stops the call at that step. `step_callback` turns the two
into diffusers' `callback_on_step_end`; the caller catches `StopAtStep` around the pipeline call and
hands it to `raise_stopped`, which says what happened in layerq's errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from layerq.errors import JobCanceled, JobTimedOut

OnStep = Callable[[int, int], None]
ShouldStop = Callable[[], str | None]
StepEnd = Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]]


class StopAtStep(Exception):
    """Raised from the step callback to leave the pipeline call at once; never escapes a job's run.

    Carries either the stop reason from `should_stop` or an exception a callback raised (which
    `raise_stopped` re-raises as it was, so e.g. a lost progress store is not reported as a model
    failure)."""

    def __init__(self, reason: str | None = None, error: Exception | None = None) -> None:
        super().__init__(reason or repr(error))
        self.reason = reason
        self.error = error


def step_callback(on_step: OnStep | None, should_stop: ShouldStop | None) -> StepEnd:
    """diffusers' `callback_on_step_end`: report the step, then stop the call if asked to."""

    def step_end(pipe: Any, i: int, t: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        try:
            if on_step is not None:
                on_step(i + 1, pipe.num_timesteps)
            reason = should_stop() if should_stop is not None else None
        except Exception as exc:
            raise StopAtStep(error=exc) from exc
        if reason:
            # Setting `pipe._interrupt` alone skips the remaining steps but still VAE-decodes and
            # post-processes the half-denoised latents; raising here returns at once.
            pipe._interrupt = True
            raise StopAtStep(reason=reason)
        return callback_kwargs

    return step_end


def raise_stopped(stop: StopAtStep) -> NoReturn:
    """What a `StopAtStep` stands for: the callback's own error as it was, `JobTimedOut` for
    "time_limit", `JobCanceled` for any other reason."""
    if stop.error is not None:
        raise stop.error
    if stop.reason == "time_limit":
        raise JobTimedOut("the job passed its time limit and was stopped") from None
    raise JobCanceled("the job was canceled") from None


def stop_if_asked(should_stop: ShouldStop | None) -> None:
    """For a pipeline without diffusers' callback (the classic decomposer): ask, and stop as above."""
    reason = should_stop() if should_stop is not None else None
    if reason:
        raise_stopped(StopAtStep(reason=reason))
