"""The migrations build exactly the schema the models describe; `taskloom migrate` can run on every
deploy without changing anything; and the initial migration can be undone and redone."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pprint import pformat
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from taskloom.config import Settings
from taskloom.db.engine import check_roles, create_database
from taskloom.db.migrate import alembic_config, current_revision, head_revision, migrate
from taskloom.db.rls import isolated_tables, shared_tables
from taskloom.db.urls import async_url
from taskloom.models import metadata
from taskloom.runtime import Runtime
from taskloom.triggers.snapshot import take
from taskloom.workflows.models import WorkflowVersion


def _drift(sync_conn: Connection) -> list[Any]:
    """What `alembic revision --autogenerate` would put in a new migration (nothing, we hope).
    Compared the way env.py configures autogenerate: types and server defaults included."""
    context = MigrationContext.configure(
        sync_conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, metadata)


@asynccontextmanager
async def connected(database_url: str) -> AsyncIterator[AsyncConnection]:
    """A privileged connection of its own (no pool) to `database_url`."""
    engine = create_async_engine(async_url(database_url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            yield conn
    finally:
        await engine.dispose()


async def drift(database_url: str) -> list[Any]:
    async with connected(database_url) as conn:
        return await conn.run_sync(_drift)


async def revision(database_url: str) -> str | None:
    async with connected(database_url) as conn:
        return await current_revision(conn)


async def snapshot(database_url: str, role: str) -> dict[str, Any]:
    """Everything `migrate` is responsible for: the revision, the tables with their row-level
    security and access lists, the policies, and the application role's attributes."""
    async with connected(database_url) as conn:
        tables = await conn.execute(
            text(
                "select c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                "coalesce(c.relacl::text[], '{}') as acl "
                "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'public' and c.relkind in ('r', 'p') order by c.relname"
            )
        )
        policies = await conn.execute(
            text(
                "select tablename, policyname, cmd, qual, with_check from pg_policies "
                "where schemaname = 'public' order by tablename, policyname"
            )
        )
        role_row = (
            await conn.execute(
                text(
                    "select rolsuper, rolbypassrls, rolcanlogin, rolcreatedb, rolcreaterole, "
                    "rolreplication, rolinherit from pg_roles where rolname = :role"
                ),
                {"role": role},
            )
        ).one()
        return {
            "revision": await current_revision(conn),
            "tables": [tuple(row) for row in tables],
            "policies": [tuple(row) for row in policies],
            "role": dict(role_row._mapping),
        }


async def public_tables(database_url: str) -> dict[str, tuple[bool, bool]]:
    async with connected(database_url) as conn:
        rows = await conn.execute(
            text(
                "select c.relname, c.relrowsecurity, c.relforcerowsecurity "
                "from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                "where n.nspname = 'public' and c.relkind in ('r', 'p')"
            )
        )
        return {row.relname: (row.relrowsecurity, row.relforcerowsecurity) for row in rows}


async def tenancy_functions(database_url: str) -> set[str]:
    async with connected(database_url) as conn:
        rows = await conn.execute(
            text(
                "select proname from pg_proc "
                "where proname in ('app_current_org', 'app_current_user')"
            )
        )
        return set(rows.scalars())


# --- the session's database ---------------------------------------------------------------------


async def test_models_and_migrated_schema_do_not_drift(settings: Settings) -> None:
    assert settings.database_url
    diff = await drift(settings.database_url)
    assert diff == [], "autogenerate would emit:\n" + pformat(diff)


async def test_database_is_at_the_head_revision(settings: Settings) -> None:
    assert settings.database_url
    assert await revision(settings.database_url) == head_revision()


async def test_migrating_again_changes_nothing(settings: Settings, runtime: Runtime) -> None:
    assert settings.database_url
    before = await snapshot(settings.database_url, settings.database_app_role)

    await migrate(settings)

    after = await snapshot(settings.database_url, settings.database_app_role)
    assert after == before
    assert after["role"]["rolsuper"] is False
    assert after["role"]["rolbypassrls"] is False
    assert after["role"]["rolcanlogin"] is True
    # and the running application's roles still pass the start-up check
    await check_roles(runtime.database)


# --- a throwaway database: down to nothing and back up -----------------------------------------


async def test_downgrade_to_base_then_upgrade_again(empty_database: Settings) -> None:
    url = empty_database.database_url
    assert url
    await migrate(empty_database)
    declared = set(isolated_tables(metadata)) | set(shared_tables(metadata))
    assert set(await public_tables(url)) == declared

    await asyncio.to_thread(command.downgrade, alembic_config(url), "base")

    assert await revision(url) is None
    assert set(await public_tables(url)) == {"alembic_version"}
    assert await tenancy_functions(url) == set()

    await migrate(empty_database)

    assert await revision(url) == head_revision()
    tables = await public_tables(url)
    assert set(tables) == declared
    assert all(tables[t] == (True, True) for t in isolated_tables(metadata)), tables
    assert await tenancy_functions(url) == {"app_current_org", "app_current_user"}
    diff = await drift(url)
    assert diff == [], "autogenerate would emit:\n" + pformat(diff)

    database = create_database(empty_database)
    try:
        await check_roles(database)
    finally:
        await database.dispose()


async def test_migration_0021_gives_every_workflow_its_current_version(
    empty_database: Settings,
) -> None:
    """Existing workflows get their current state as their current version, with the triggers'
    and schedules' snapshot in the very form a save takes it (triggers/snapshot.py)."""
    url = empty_database.database_url
    assert url
    await asyncio.to_thread(command.upgrade, alembic_config(url), "0020")
    org, user, workflow, watched = (uuid.uuid4() for _ in range(4))
    definition = {"steps": [{"id": "t", "type": "transform", "args": {"value": 1}}]}
    async with connected(url) as conn:
        await conn.execute(
            text("insert into organizations (id, name, slug) values (:o, 'Old', :slug)"),
            {"o": org, "slug": f"old-{org.hex[:8]}"},
        )
        await conn.execute(
            text("insert into users (id, email, display_name) values (:u, :e, 'Old')"),
            {"u": user, "e": f"old-{user.hex[:8]}@example.test"},
        )
        for workflow_id, version in ((workflow, 3), (watched, 1)):
            await conn.execute(
                text(
                    "insert into workflows (id, org_id, name, description, definition, version, "
                    "created_by, updated_by) values (:w, :o, 'old', 'd', "
                    "cast(:d as jsonb), :v, :u, :u)"
                ),
                {"w": workflow_id, "o": org, "d": json.dumps(definition), "v": version, "u": user},
            )
        await conn.execute(
            text(
                "insert into workflow_triggers (id, org_id, workflow_id, kind, verification, "
                "response, sync_timeout_seconds, encrypted_secret, created_at) values "
                "(:t, :o, :w, 'webhook', 'github', 'sync', 5, 'sealed', now() - interval '1 hour')"
            ),
            {"t": uuid.uuid4(), "o": org, "w": workflow},
        )
        await conn.execute(
            text(
                "insert into workflow_triggers (id, org_id, workflow_id, kind, enabled, "
                "description, event_workflow_id, event_statuses) values (:t, :o, :w, 'event', "
                "false, 'on failure', :x, '[\"failed\", \"cancelled\"]')"
            ),
            {"t": uuid.uuid4(), "o": org, "w": workflow, "x": watched},
        )
        await conn.execute(
            text(
                "insert into workflow_schedules (id, org_id, workflow_id, cron, timezone, input, "
                "overlap, next_tick_at) values (:s, :o, :w, '0 0 1 1 *', 'Europe/Berlin', "
                "'{\"n\": 1}', 'queue', now() + interval '1 day')"
            ),
            {"s": uuid.uuid4(), "o": org, "w": workflow},
        )
        await conn.commit()

    await migrate(empty_database)

    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with AsyncSession(engine) as db:
            rows = (await db.execute(select(WorkflowVersion))).scalars().all()
            by_workflow = {row.workflow_id: row for row in rows}
            assert set(by_workflow) == {workflow, watched}
            version = by_workflow[workflow]
            assert (version.number, version.name, version.description) == (3, "old", "d")
            assert (version.definition, version.created_by) == (definition, user)
            assert version.message == "Recorded when version history began"
            taken = await take(db, workflow)
            assert version.triggers == taken.triggers
            assert version.schedules == taken.schedules
            assert [t["kind"] for t in version.triggers] == ["webhook", "event"]
            assert version.triggers[1]["on"] == {
                "workflow": str(watched),
                "status": ["cancelled", "failed"],
            }
            assert "sealed" not in json.dumps(version.triggers)
            assert by_workflow[watched].triggers == by_workflow[watched].schedules == []
    finally:
        await engine.dispose()
