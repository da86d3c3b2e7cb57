"""A Redis that survives losing its master, on loopback: one master, one replica and three Sentinels,
for the failover tests and `bench/redis_failover.py`. Deployments run the same shape with their own
hosts (docker-compose.yml profile `ha`, docs/redis-ha.md).

Sentinels are `redis-server --sentinel` (Debian's `redis-sentinel` is the same binary) with configs
generated in the run directory; they rewrite those files as they learn the topology."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from layerq.stack import RedisServer, _popen, free_port, stop_process, stop_processes, wait_until
from storage.client import RedisOptions, ping, sentinel_master_address


@dataclass
class SentinelGroup:
    run_dir: Path
    master_name: str = "mymaster"
    down_after_ms: int = 2500
    """How long a master may stay silent before a Sentinel thinks it down (production: 5000-30000)."""
    failover_timeout_ms: int = 10000
    sentinel_count: int = 3
    servers: list[RedisServer] = field(default_factory=list)
    sentinels: list[subprocess.Popen] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.sentinel_ports) + "/0"

    @property
    def options(self) -> RedisOptions:
        return RedisOptions(sentinel_master=self.master_name)

    def start(self) -> "SentinelGroup":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fast = ["--repl-diskless-sync-delay", "0"]  # a (re)joining replica syncs at once
        master = RedisServer(self.run_dir / "redis-0", persist=True, extra_args=fast).start()
        replica = RedisServer(self.run_dir / "redis-1", persist=True,
                              extra_args=[*fast, "--replicaof", "127.0.0.1", str(master.port)]).start()
        self.servers = [master, replica]
        for n in range(self.sentinel_count):
            port = free_port()
            d = self.run_dir / f"sentinel-{n}"
            d.mkdir(parents=True, exist_ok=True)
            conf = d / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {d}", "protected-mode no",
                f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {self.master_name} 1", "",
            ]))
            with open(d / "sentinel.log", "ab") as log:
                self.sentinels.append(_popen(["redis-server", str(conf), "--sentinel"], stdout=log,
                                             stderr=subprocess.STDOUT))
            self.sentinel_ports.append(port)
        wait_until(lambda: self.master_port() == master.port, 20, "sentinels")
        wait_until(lambda: self._replica_synced(replica.port), 20, "replica")
        return self

    def master_port(self) -> int | None:
        addr = sentinel_master_address(self.url, self.options)
        return addr[1] if addr else None

    def server_on(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def _replica_synced(self, port: int) -> bool:
        from storage.client import replication_role

        return replication_role(f"redis://127.0.0.1:{port}/0") == ("slave", "up")

    def kill_master(self) -> tuple[RedisServer, float]:
        """SIGKILL the current master (a lost host: no flush, no goodbye); returns it and when."""
        port = self.master_port()
        assert port is not None, "no master known"
        server = self.server_on(port)
        stop_process(server.proc, signal.SIGKILL, timeout_s=5)
        return server, time.monotonic()

    def wait_promoted(self, old_port: int, timeout_s: float = 30) -> int:
        """Block until the Sentinels name another master; return its port."""
        wait_until(lambda: (self.master_port() or old_port) != old_port, timeout_s, "failover", interval_s=0.05)
        port = self.master_port()
        assert port is not None
        return port

    def rejoin(self, server: RedisServer, timeout_s: float = 60) -> None:
        """Start a killed server again on its port (as a host coming back would); the Sentinels turn
        it into a replica of the new master. Returns once it has synced."""
        server.start()
        wait_until(lambda: self._replica_synced(server.port), timeout_s, "rejoined replica", interval_s=0.2)

    def stop(self) -> None:
        stop_processes(list(self.sentinels), timeout_s=5)
        for server in self.servers:
            server.stop()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.sentinels) and any(
            s.proc is not None and s.proc.poll() is None and ping(s.url) for s in self.servers)
