"""Step caching (lossy, opt-in): reuse the transformer's output on some denoising steps.

Neighbouring steps in the middle of a flow-matching schedule predict similar velocities. Inside a
window of the schedule the transformer runs every k-th step; on the steps between, each branch (the
prompt pass and the negative-prompt pass) reuses its last output. The schedule is fixed in advance, so
nothing here reads GPU values on the host: the loop stays free of synchronisation.
"""

from __future__ import annotations

import contextlib


class StepCache:
    """Wraps `transformer.forward` for the duration of one pipeline call (see `active`)."""

    def __init__(self, interval: int, window: tuple[float, float]):
        if interval < 2:
            raise ValueError("step caching needs an interval of at least 2")
        self.interval = interval
        self.window = window
        self.computed_calls = 0
        self.reused_calls = 0

    def reuse_step(self, step: int, num_steps: int) -> bool:
        """Whether `step` (0-based) reuses the previous output."""
        start = int(round(self.window[0] * num_steps))
        end = int(round(self.window[1] * num_steps))
        return start <= step < end and (step - start) % self.interval != 0

    @contextlib.contextmanager
    def active(self, transformer, num_steps: int, calls_per_step: int):
        """Within the block, `transformer(...)` reuses outputs on the steps that `reuse_step` names."""
        had_own_forward = "forward" in transformer.__dict__  # e.g. an accelerate hook
        original = transformer.forward
        state = {"call": 0, "last": {}}

        def forward(*args, **kwargs):
            call = state["call"]
            state["call"] = call + 1
            step, branch = divmod(call, calls_per_step)
            if branch in state["last"] and self.reuse_step(step, num_steps):
                self.reused_calls += 1
                return state["last"][branch]
            out = original(*args, **kwargs)
            state["last"][branch] = out
            self.computed_calls += 1
            return out

        transformer.forward = forward
        try:
            yield self
        finally:
            if had_own_forward:
                transformer.forward = original
            else:
                del transformer.forward  # back to the class's forward
