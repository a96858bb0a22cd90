"""The application role through a real PgBouncer 1.18 in transaction mode (docs/SCALING.md):
what breaks without DATABASE_PGBOUNCER (a refused startup parameter; prepared statements that
another client's server connection does not have, or already has), that nothing does with it,
that the role's statement_timeout still applies, and the suite's tenant-isolation, execution
and GDPR tests passing through it (TEST_THROUGH_PGBOUNCER=1, in a nested pytest)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from taskloom.config import Settings
from taskloom.db.driver import app_connection
from taskloom.db.engine import Database, create_database
from taskloom.db.tenancy import tenant_transaction
from taskloom.doctor import Check, Status, run_checks
from tests.conftest import fresh_deployment
from tests.pgbouncer_support import PgBouncer, pgbouncer_binary, running_pgbouncer

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8  # client connections of the application engine, over PgBouncer's pool of 2


@pytest.fixture
def pgbouncer(pg_server_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    with running_pgbouncer(pg_server_url, tmp_path / "pgbouncer") as bouncer:
        yield bouncer


@pytest.fixture
def lenient_pgbouncer(pg_server_url: str, tmp_path: Path) -> Iterator[PgBouncer]:
    """One that drops statement_timeout from the startup packet instead of refusing it, so
    that what is left to break is the prepared statements."""
    with running_pgbouncer(
        pg_server_url, tmp_path / "lenient", ignore_startup_parameters="statement_timeout"
    ) as bouncer:
        yield bouncer


def _through(bouncer: PgBouncer, settings: Settings, *, setting: bool) -> Database:
    return create_database(
        settings.model_copy(
            update={
                "database_app_url": bouncer.route(settings.app_database_url()),
                "database_pgbouncer": setting,
                "database_pool_size": CLIENTS,
            }
        )
    )


async def _workload(database: Database) -> tuple[list[str], set[int]]:
    """CLIENTS callers at once, each alternating the hot path's statements (asyncpg, each in
    autocommit) and a tenant transaction through SQLAlchemy: the errors, and the server
    backends that answered."""
    errors: list[str] = []
    backends: set[int] = set()

    async def caller(number: int) -> None:
        for round_ in range(15):
            try:
                async with app_connection(database) as statements:
                    assert await statements.fetchval("select $1::int + 1", number) == number + 1
                    backends.add(await statements.fetchval("select pg_backend_pid()"))
                async with tenant_transaction(database, org_id=None, user_id=None) as session:
                    got = await session.execute(text("select :n * 2"), {"n": round_})
                    assert got.scalar_one() == round_ * 2
            except DBAPIError as error:
                errors.append(str(error.orig))

    await asyncio.gather(*(caller(number) for number in range(CLIENTS)))
    return errors, backends


async def test_without_the_setting_pgbouncer_refuses_the_statement_timeout_startup_parameter(
    settings: Settings, pgbouncer: PgBouncer
) -> None:
    database = _through(pgbouncer, settings, setting=False)
    try:
        with pytest.raises(DBAPIError, match="unsupported startup parameter: statement_timeout"):
            async with database.app_engine.connect():
                pass
    finally:
        await database.dispose()


async def test_prepared_statements_break_across_server_connections_unless_the_setting_is_on(
    settings: Settings, lenient_pgbouncer: PgBouncer
) -> None:
    cached = _through(lenient_pgbouncer, settings, setting=False)
    try:
        errors, _ = await _workload(cached)
    finally:
        await cached.dispose()
    named = re.compile(r'prepared statement "__asyncpg_stmt_\w+__" (does not exist|already exists)')
    assert errors
    assert all(named.search(error) for error in errors), errors[:3]

    unprepared = _through(lenient_pgbouncer, settings, setting=True)
    try:
        errors, backends = await _workload(unprepared)
    finally:
        await unprepared.dispose()
    assert errors == []
    # eight clients really did share two server connections
    assert 1 <= len(backends) <= 2


@pytest.fixture
async def short_timeout(pg_server_url: str, redis_url: str) -> AsyncIterator[Settings]:
    async with fresh_deployment(
        pg_server_url, redis_url, label="pgbtimeout", database_statement_timeout_ms=300
    ) as deployment:
        yield deployment


async def test_the_roles_statement_timeout_applies_through_pgbouncer(
    short_timeout: Settings, pgbouncer: PgBouncer
) -> None:
    database = _through(pgbouncer, short_timeout, setting=True)
    try:
        async with app_connection(database) as statements:
            assert await statements.fetchval("show statement_timeout") == "300ms"
            assert await statements.fetchval("show application_name") == "taskloom-app"
            with pytest.raises(DBAPIError, match="statement timeout"):
                await statements.execute("select pg_sleep(2)")
    finally:
        await database.dispose()


# The suite's modules (or tests) run through PgBouncer: tenant isolation, GDPR, the execute
# lane, the worker's claim and step writes, waiting, and workers running executions end to end.
THROUGH = [
    "tests/db/test_tenant_isolation.py",
    "tests/gdpr/test_gdpr.py",
    "tests/executions/test_lane.py",
    "tests/executions/test_hot_path.py",
    "tests/executions/test_executions.py::test_execute_runs_every_step_and_passes_outputs_between_them",
    "tests/executions/test_executions.py::test_a_503_is_retried_with_backoff_until_it_succeeds",
    "tests/executions/test_executions.py::test_cancel_a_running_execution_stops_after_the_current_step",
    "tests/executions/test_executions.py::test_a_queued_export_is_built_by_a_worker_and_downloads_once",
    "tests/executions/test_waiting.py::test_a_wait_parks_the_execution_without_a_slot_and_survives_a_worker_restart",
    "tests/executions/test_waiting.py::test_an_approver_decides_and_anyone_else_gets_403",
    "tests/executions/test_waiting.py::test_a_sub_workflow_returns_its_output_and_a_failing_child_fails_the_step",
]


def test_tenant_isolation_execution_and_gdpr_tests_pass_through_pgbouncer(tmp_path: Path) -> None:
    pgbouncer_binary()  # skipped (failed under CI) without it, as the nested run would be
    base = tmp_path / "nested"
    pytest_command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    finished = subprocess.run(
        [*pytest_command, f"--basetemp={base}", *THROUGH],
        cwd=ROOT,
        env={**os.environ, "TEST_THROUGH_PGBOUNCER": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    summary = finished.stdout.strip().splitlines()[-1]  # pytest's; stderr may log after it
    assert " passed" in summary, output
    assert "skipped" not in summary, output
    # the application role's connections did go through the session's PgBouncer
    logs = "".join(log.read_text() for log in base.glob("pgbouncer*/pgbouncer.log"))
    assert re.search(r"login attempt: db=taskloom_test_\w+ user=taskloom_app_test_\w+", logs)


async def test_doctor_names_the_setting_and_checks_the_roles_timeout(
    settings: Settings, pgbouncer: PgBouncer
) -> None:
    through = settings.model_copy(
        update={"database_app_url": pgbouncer.route(settings.app_database_url())}
    )

    async def database_checks(**update: object) -> dict[str, Check]:
        checks = await run_checks(through.model_copy(update=update))
        return {c.name: c for c in checks if c.area == "database"}

    refused = (await database_checks(database_pgbouncer=False))["connection"]
    assert refused.status == Status.FAIL
    assert "set DATABASE_PGBOUNCER=true" in refused.detail

    fine = await database_checks(database_pgbouncer=True)
    assert fine["pgbouncer"].status == Status.PASS
    assert fine["application role"].status == Status.PASS
    assert "connection" not in fine

    stale = await database_checks(database_pgbouncer=True, database_statement_timeout_ms=1234)
    assert stale["pgbouncer"].status == Status.WARN
    assert "statement_timeout is 30000 ms, DATABASE_STATEMENT_TIMEOUT_MS is 1234" in (
        stale["pgbouncer"].detail
    )
