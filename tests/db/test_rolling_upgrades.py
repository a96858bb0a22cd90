"""Rolling upgrades: `taskloom migrate` runs take turns under one advisory lock; every migration
declares whether the previous release can run on its schema, and the database records it; only
`taskloom up` migrates by itself (docs/OPERATIONS.md)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory

from taskloom.config import Settings
from taskloom.db.engine import check_roles, create_database
from taskloom.db.migrate import (
    MIGRATION_LOCK,
    MIGRATIONS_DIR,
    alembic_config,
    head_revision,
    migrate,
)
from taskloom.db.revisions import UndeclaredMigration, breaks_previous, lineage
from tests.cli_support import deployment_env, serve_api
from tests.servers import free_port


def _scripts(directory: Path) -> ScriptDirectory:
    config = alembic_config("postgresql://unused")
    config.set_main_option("script_location", str(directory))
    return ScriptDirectory.from_config(config)


def test_every_migration_declares_whether_the_previous_release_can_run_on_it() -> None:
    """A new migration file without `breaks_previous = True|False` fails here (and `migrate`
    refuses to apply it)."""
    scripts = list(_scripts(MIGRATIONS_DIR).walk_revisions())
    assert len(scripts) == len(lineage())
    undeclared = []
    for script in scripts:
        try:
            breaks_previous(script)
        except UndeclaredMigration as missing:
            undeclared.append(str(missing))
    assert undeclared == []


def test_a_migration_without_the_declaration_is_refused(tmp_path: Path) -> None:
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "migrations")
    head = head_revision()
    (tmp_path / "migrations" / "versions" / "99999999_9999_undeclared.py").write_text(
        f'"""A migration that forgot its declaration."""\n\nrevision = "9999"\n'
        f'down_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    pass\n\n\ndef downgrade() -> None:\n    pass\n"
    )
    scripts = _scripts(tmp_path / "migrations")
    undeclared = scripts.get_revision("9999")
    assert undeclared is not None
    with pytest.raises(UndeclaredMigration, match="9999"):
        breaks_previous(undeclared)


async def test_schema_revisions_records_each_applied_migration_and_its_declaration(
    settings: Settings,
) -> None:
    assert settings.database_url
    admin = await asyncpg.connect(settings.database_url)
    try:
        rows = await admin.fetch("select revision, breaks_previous from schema_revisions")
    finally:
        await admin.close()
    scripts = _scripts(MIGRATIONS_DIR)
    expected = {r: breaks_previous(scripts.get_revision(r)) for r in lineage()}  # type: ignore[arg-type]
    assert {row["revision"]: row["breaks_previous"] for row in rows} == expected
    assert expected["0003"] is True  # re-sealed the audit chain: old code would break it
    assert expected[lineage()[0]] is False


async def test_the_application_role_reads_schema_revisions_but_cannot_change_it(
    settings: Settings,
) -> None:
    app = await asyncpg.connect(settings.app_database_url())
    try:
        assert await app.fetchval("select count(*) from schema_revisions") == len(lineage())
        for statement in (
            "insert into schema_revisions (revision, breaks_previous) values ('x', false)",
            "update schema_revisions set breaks_previous = true",
            "delete from schema_revisions",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
    finally:
        await app.close()


async def test_two_taskloom_migrate_at_once_on_a_fresh_database_both_succeed(
    empty_database: Settings, tmp_path: Path
) -> None:
    """Without the lock around `alembic upgrade`, the second run fails on a table (or an
    alembic_version row) the first one created meanwhile."""
    env = deployment_env(empty_database)

    async def run() -> tuple[int | None, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "taskloom", "migrate",
            env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        return process.returncode, output.decode()

    runs = await asyncio.gather(run(), run())
    assert [code for code, _ in runs] == [0, 0], "\n---\n".join(out for _, out in runs)

    url = empty_database.database_url
    assert url
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("select version_num from alembic_version") == head_revision()
        recorded = await admin.fetch("select revision from schema_revisions")
        assert {row["revision"] for row in recorded} == set(lineage())
        assert await admin.fetchval("select pg_try_advisory_lock($1)", MIGRATION_LOCK)  # released
    finally:
        await admin.close()
    database = create_database(empty_database)
    try:
        await check_roles(database)  # the application role exists, with its grants
    finally:
        await database.dispose()


async def test_taskloom_api_does_not_migrate_and_is_not_ready_on_an_older_schema(
    empty_database: Settings, tmp_path: Path
) -> None:
    url = empty_database.database_url
    assert url
    await migrate(empty_database)
    await asyncio.to_thread(command.downgrade, alembic_config(url), "-1")
    behind = lineage()[1]

    port = free_port()
    server = serve_api(deployment_env(empty_database), port, tmp_path / "api.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as api:
            ready = await api.get("/health/ready")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert ready.status_code == 503, ready.text
    database = ready.json()["checks"]["database"]
    assert database["schema"] == "behind"
    assert f"at {behind}, behind" in database["error"]
    admin = await asyncpg.connect(url)
    try:
        assert await admin.fetchval("select version_num from alembic_version") == behind
    finally:
        await admin.close()


async def test_the_migration_lock_is_held_for_the_whole_run(
    empty_database: Settings,
) -> None:
    """While another session holds the lock, `migrate` waits before touching the schema."""
    url = empty_database.database_url
    assert url
    holder = await asyncpg.connect(url)
    try:
        await holder.execute("select pg_advisory_lock($1)", MIGRATION_LOCK)
        running = asyncio.create_task(migrate(empty_database))
        await asyncio.sleep(2)
        assert not running.done()
        tables = await holder.fetchval("select count(*) from pg_tables where schemaname = 'public'")
        assert tables == 0  # alembic has not started: it waits for the lock too
        started = time.monotonic()
        await holder.execute("select pg_advisory_unlock($1)", MIGRATION_LOCK)
        await asyncio.wait_for(running, 120)
        print(f"migrated {time.monotonic() - started:.1f} s after the lock was released")
    finally:
        await holder.close()
