"""The Redis client every store shares (one connection pool per process), and the faults that count
as transient. Nothing outside `storage/` imports redis: the worker asks `is_transient` instead."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from layerq.errors import TransientError


STORE_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
"""What the job store raises once its own retries are spent; the API maps these to 503."""


def connect(url: str) -> redis.Redis:
    """A client that rides out a Redis restart: connection errors are retried with backoff for
    about ten seconds before they reach the caller."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=12),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )


def ping(url: str) -> bool:
    """True when a Redis answers at `url` (for launchers waiting on a redis-server they started)."""
    return bool(redis.Redis.from_url(url).ping())


def is_transient(exc: BaseException) -> bool:
    """Storage or Redis unreachable after their own in-process retries: worth a later retry of the
    job, not the job's fault. Object stores raise `StorageUnavailable` (a TransientError)."""
    return isinstance(exc, (TransientError, *STORE_DOWN, ConnectionError, TimeoutError))
