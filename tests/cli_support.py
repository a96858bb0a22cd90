"""Running the `taskloom` command in a subprocess, with a clean environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from taskloom.config import Settings


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Taskloom setting, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_", "REDIS_", "TASKLOOM_", "JWT_", "TEST_", "CREDENTIAL_"))
    }
    env.update(extra)
    return env


def deployment_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `taskloom` process serving `settings`' deployment (its database,
    application role, Redis and key prefix) with test-speed password hashing, plus `extra`."""
    return clean_env(
        TASKLOOM_ENV="test",
        DATABASE_URL=settings.database_url or "",
        DATABASE_APP_ROLE=settings.database_app_role,
        **app_role_route(settings),
        REDIS_URL=settings.redis_url or "",
        **redis_route(settings),
        REDIS_KEY_PREFIX=settings.key_prefix,
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_KIB="1024",
        PASSWORD_HASH_PARALLELISM="1",
        PYTHONUNBUFFERED="1",
        **extra,
    )


def app_role_route(settings: Settings) -> dict[str, str]:
    """DATABASE_APP_URL and DATABASE_PGBOUNCER when the deployment's application role goes
    through PgBouncer (TEST_THROUGH_PGBOUNCER=1, tests/pgbouncer_support.py)."""
    if not settings.database_app_url:
        return {}
    return {
        "DATABASE_APP_URL": settings.database_app_url,
        "DATABASE_PGBOUNCER": str(settings.database_pgbouncer).lower(),
    }


def redis_route(settings: Settings) -> dict[str, str]:
    """REDIS_CLUSTER and REDIS_CLUSTER_NODES when the deployment's Redis is a Cluster
    (TEST_REDIS_CLUSTER=1, tests/redis_cluster.py)."""
    if not settings.redis_cluster:
        return {}
    return {"REDIS_CLUSTER": "true", "REDIS_CLUSTER_NODES": settings.redis_cluster_nodes or ""}


async def run_taskloom(
    *args: str, env: dict[str, str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess without blocking the event loop (`stdin` fed to it)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskloom", *args],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def serve_api(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`taskloom api` in a subprocess, once /health/live answers (output in `log`)."""
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskloom", "api", "--port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=0.5)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise AssertionError(log.read_text())
