"""The Redis client every store shares (one connection pool per process), and the faults that count
as transient. Nothing outside `storage/` imports redis: the worker asks `is_transient` instead.

`LAYERQ_REDIS_URL` names either one Redis (`redis://`, `rediss://`, `unix://`: a single server, or a
managed service's failover endpoint, one DNS name that moves) or a set of Sentinels
(`sentinel://h1:26379;sentinel://h2:26379/0`), which name the current master of
`LAYERQ_REDIS_SENTINEL_MASTER`. The same URL and options drive Celery's broker (layerq/celery_app.py)
so the queue and the job records always follow the same master. docs/redis-ha.md says what a
failover may lose and how `LAYERQ_REDIS_WAIT_REPLICAS` closes that window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.connection import SSLConnection
from redis.sentinel import Sentinel, SentinelManagedConnection

from layerq.errors import TransientError


STORE_DOWN: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
"""What the job store raises once its own retries are spent; the API maps these to 503."""

RETRY_ON: list[type[Exception]] = [redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError]
"""Faults after which a command is sent again on a fresh connection. A fresh connection resolves the
master again: through the Sentinels, or through DNS for a managed endpoint that moved (the old master,
now a replica, answers READONLY until the name points elsewhere)."""


@dataclass(frozen=True)
class RedisOptions:
    """How to reach the master behind a `sentinel://` URL (ignored for a plain `redis://` URL)."""

    sentinel_master: str = "mymaster"
    sentinel_password: str = ""
    """Password of the Sentinels themselves (`requirepass` in sentinel.conf); the master's password
    is the URL's, as for kombu."""
    sentinel_tls: bool = False
    """TLS to the Sentinels and to the master they name."""


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: list[tuple[str, int]]
    db: int
    username: str | None
    password: str | None


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """`sentinel://[user:pass@]host[:port][;sentinel://host2[:port]]...[/db]`, kombu's format: the
    credentials and database of the first part that names them apply to the master."""
    sentinels: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        u = urlsplit(part)
        if u.scheme.lower() != "sentinel" or not u.hostname:
            raise ValueError(f"not a sentinel:// address: {part!r}")
        sentinels.append((u.hostname, u.port or 26379))
        if u.path.strip("/"):
            db = int(u.path.strip("/"))
        if u.password and password is None:
            username, password = (unquote(u.username) if u.username else None), unquote(u.password)
    if not sentinels:
        raise ValueError("LAYERQ_REDIS_URL names no Sentinel")
    return SentinelUrl(sentinels, db, username, password)


def _retry_kwargs() -> dict[str, Any]:
    # About 13 s of backoff (0.1, 0.2, 0.4, 0.8, then every second): rides out a Redis restart and a
    # Sentinel failover with the timings docs/redis-ha.md recommends; a longer outage reaches the caller
    # (503 at the API). The 1 s cap keeps a request at most a second behind a promotion.
    return {"retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=16), "retry_on_error": RETRY_ON}


def connect(url: str, options: RedisOptions | None = None) -> redis.Redis:
    """A client that rides out a Redis restart or a failover: connection errors are retried with
    backoff for about 13 seconds, each time on a freshly resolved master, before they reach the caller.

    Retrying is safe for what layerq writes: job ids are chosen by the API before anything is written,
    so a creation sent twice writes the same hash and the same queue entries again, never a second job."""
    if is_sentinel(url):
        return sentinel_master(url, options or RedisOptions())
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **_retry_kwargs())


class MasterConnection(SentinelManagedConnection):
    """A connection to the master the Sentinels name, also when it reconnects in a command's retry.

    redis-py (7.4) reconnects a connection dropped during a command from `send_packed_command`,
    which goes straight to the last address it used and skips the Sentinel lookup that `connect()`
    does. A command in flight when the master died then spent its whole retry budget (~13 s) on the
    dead address and answered 503, although the Sentinels had named the new master after ~4 s
    (bench/redis_failover.py's outlier, BENCHMARKS.md)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()  # ask the Sentinels (SentinelManagedConnection.connect), not the last address
        super().send_packed_command(command, check_health)


class MasterSSLConnection(MasterConnection, SSLConnection):
    pass


def sentinel_master(url: str, options: RedisOptions, *, decode_responses: bool = True) -> redis.Redis:
    parsed = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if options.sentinel_password:
        sentinel_kwargs["password"] = options.sentinel_password
    master_kwargs: dict[str, Any] = {"db": parsed.db, "socket_connect_timeout": 2.0, "health_check_interval": 30}
    if parsed.password:
        master_kwargs.update(username=parsed.username, password=parsed.password)
    if options.sentinel_tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(parsed.sentinels, sentinel_kwargs=sentinel_kwargs, **master_kwargs)
    connection_class = MasterSSLConnection if options.sentinel_tls else MasterConnection
    return sentinel.master_for(options.sentinel_master, decode_responses=decode_responses,
                               connection_class=connection_class, **_retry_kwargs())


def options_of(settings: Any) -> RedisOptions:
    """The Redis options held by a `layerq.config.Settings`."""
    return RedisOptions(
        sentinel_master=settings.redis_sentinel_master,
        sentinel_password=settings.redis_sentinel_password,
        sentinel_tls=settings.redis_sentinel_tls,
    )


def connect_settings(settings: Any) -> redis.Redis:
    return connect(settings.redis_url, options_of(settings))


def ping(url: str, options: RedisOptions | None = None) -> bool:
    """True when a Redis answers at `url` (for launchers waiting on a redis-server they started)."""
    if is_sentinel(url):
        return bool(sentinel_master(url, options or RedisOptions()).ping())
    return bool(redis.Redis.from_url(url).ping())


def is_transient(exc: BaseException) -> bool:
    """Storage or Redis unreachable after their own in-process retries: worth a later retry of the
    job, not the job's fault. Object stores raise `StorageUnavailable` (a TransientError)."""
    return isinstance(exc, (TransientError, *STORE_DOWN, ConnectionError, TimeoutError))


def sentinel_master_address(url: str, options: RedisOptions | None = None) -> tuple[str, int] | None:
    """(host, port) of the master the Sentinels name now, or None while none is known (launchers
    and tests watching a failover)."""
    options = options or RedisOptions()
    parsed = parse_sentinel_url(url)
    kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if options.sentinel_password:
        kwargs["password"] = options.sentinel_password
    for host, port in parsed.sentinels:
        try:
            addr = redis.Redis(host=host, port=port, **kwargs).sentinel_get_master_addr_by_name(options.sentinel_master)
        except redis.RedisError:
            continue
        if addr:
            return str(addr[0]), int(addr[1])
    return None


def replication_role(url: str) -> tuple[str, str]:
    """(role, master link status) of one server: ("master", "") or ("slave", "up"|"down")."""
    info = redis.Redis.from_url(url, decode_responses=True, socket_timeout=2).info("replication")
    return str(info.get("role", "")), str(info.get("master_link_status", ""))
