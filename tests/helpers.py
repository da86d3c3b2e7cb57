"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from layerq.client import LayerqClient
from storage.factory import open_object_store


def wait_for(check: Callable[[], object], timeout_s: float = 60, interval_s: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def wait_running(client: LayerqClient, job_id: str, min_step: int = 1, timeout_s: float = 60) -> dict:
    """Until the job is running and has done at least `min_step` denoising steps."""

    def check():
        job = client.get(job_id)
        return job if job["status"] == "running" and job["progress"]["step"] >= min_step else None

    return wait_for(check, timeout_s, what=f"job {job_id} running")


def job_objects(stack, job_id: str) -> list[str]:
    return open_object_store(stack.settings).list(f"jobs/{job_id}/")


def transition_log(stack, job_id: str) -> list[str]:
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    return r.lrange(f"{stack.settings.key_prefix}:job:{job_id}:log", 0, -1)


def terminal_transitions(stack, job_id: str) -> list[str]:
    return [e for e in transition_log(stack, job_id) if e.split(">")[1].split("@")[0] in {"succeeded", "failed", "canceled", "expired"}]


def drain(stack, timeout_s: float = 120) -> None:
    """Until no job of this stack is queued or running (earlier tests' jobs would skew timings)."""
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    prefix = stack.settings.key_prefix

    def idle() -> bool:
        if r.zcard(f"{prefix}:queued:decompose"):
            return False
        for key in r.scan_iter(f"{prefix}:job:*", count=1000):
            if not key.endswith(":log") and r.hget(key, "status") in ("queued", "running", "canceling"):
                return False
        return True

    wait_for(idle, timeout_s, interval_s=0.2, what="idle stack")
