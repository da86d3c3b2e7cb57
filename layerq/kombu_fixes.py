"""A guard around one kombu (5.7) failure on a broker connection loss, found by the Redis failover test
(tests/test_redis_failover.py): without it the CPU worker died at the master's SIGKILL, and every
compose, combine and webhook job after it waited forever.

What happens: a consumer that has unacknowledged messages in hand (the CPU worker's thread pool keeps
polling while its jobs run; the solo-pool GPU workers do not) loses the connection. Celery's
`on_connection_error_after_connected` first calls `Connection.collect()`, whose channel close fails
on the dead socket (a connection error, ignored) and which then detaches the transport from its
`Connection` (`transport.client = None`) while the channel stays the connection's default channel.
Celery then calls `connection.close()`: the channel is closed again, wants to give its unacked
messages back, builds a new pool and reads `self.connection.client.hostname` → AttributeError, which
no caller treats as a connection error, so the worker stops with "Unrecoverable error".

The guard turns "this channel's connection was collected" into the connection error kombu's callers
already ignore. The messages stay in kombu's unacked set: the thread running the job finishes and
records it (its ack then fails and is logged), and the visibility-timeout sweep puts back whatever no
one finished; `JobStore.begin_attempt` makes a redelivered finished job a no-op."""

from __future__ import annotations

from typing import Any

_applied = False


def guard_collected_channels() -> None:
    """Patch kombu's Redis channel once per process (idempotent)."""
    global _applied
    if _applied:
        return
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> dict:
        if self.connection is None or self.connection.client is None:
            # A builtin ConnectionError: in the transport's connection_errors (as OSError), no
            # redis import needed here (only storage/ speaks redis).
            raise ConnectionError("the broker connection of this channel was closed after a connection loss")
        return original(self, asynchronous=asynchronous)

    kombu_redis.Channel._connparams = _connparams
    _applied = True
