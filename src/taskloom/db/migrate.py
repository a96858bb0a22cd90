"""Bring a database to the current schema and (re)create the application role with exactly the
privileges it needs. Idempotent: `taskloom migrate` may run on every deploy, as a one-off job
before the new release's processes (docs/OPERATIONS.md); concurrent runs take turns."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from taskloom.config import Settings
from taskloom.db.base import Base
from taskloom.db.rls import AppAccess, tables_with_access
from taskloom.db.urls import async_url

log = structlog.get_logger("taskloom.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def earlier_migration(filename: str) -> ModuleType:
    """An earlier migration's module (`versions/<filename>`), for a migration that amends or
    restores the SQL text it holds: read from it, not repeated."""
    path = MIGRATIONS_DIR / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"taskloom_migration_{path.stem}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = database_url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://unused")).get_current_head()
    assert head is not None
    return head


async def current_revision(conn: AsyncConnection) -> str | None:
    def _read(sync_conn: object) -> str | None:
        return MigrationContext.configure(sync_conn).get_current_revision()  # type: ignore[arg-type]

    return await conn.run_sync(_read)


# Session-level advisory lock every `taskloom migrate` takes for its whole run.
MIGRATION_LOCK = 7265847


async def migrate(settings: Settings) -> None:
    """Upgrade to head, then ensure the application role and its grants, all under one
    advisory lock: concurrent runs (two deploy jobs, a retried job) take turns, and the second
    finds the schema at head and only re-applies the grants."""
    if not settings.database_url:
        raise ValueError("DATABASE_URL is not set")
    url = settings.database_url
    async with _migration_lock(url):
        # Alembic's env.py runs its own event loop, so it needs a thread of its own.
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        await ensure_app_role(settings)


@asynccontextmanager
async def _migration_lock(url: str) -> AsyncIterator[None]:
    """Hold MIGRATION_LOCK on a connection of its own, open for the whole run. A session lock
    (not a transaction's) survives the commits in between; closing the connection releases it
    even if the unlock cannot be sent."""
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            taken = await conn.scalar(text(f"select pg_try_advisory_lock({MIGRATION_LOCK})"))
            if not taken:
                log.info("migration_lock_wait", detail="another taskloom migrate is running")
                await conn.execute(text(f"select pg_advisory_lock({MIGRATION_LOCK})"))
            await conn.commit()
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(text(f"select pg_advisory_unlock({MIGRATION_LOCK})"))
                    await conn.commit()
    finally:
        await engine.dispose()


async def ensure_app_role(settings: Settings) -> None:
    """Create or update the login role the application uses: no BYPASSRLS, owns nothing,
    DATABASE_STATEMENT_TIMEOUT_MS as its statement_timeout. Called by `migrate`, under its
    lock."""
    assert settings.database_url
    role = settings.database_app_role
    password = (
        settings.database_app_password.get_secret_value()
        if settings.database_app_password
        else None
    )
    engine = create_async_engine(async_url(settings.database_url), poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            exists = (
                await conn.execute(text("select 1 from pg_roles where rolname = :r"), {"r": role})
            ).scalar()
            attributes = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
            verb = "ALTER" if exists else "CREATE"
            await conn.execute(text(f'{verb} ROLE "{role}" WITH {attributes}'))
            # The role's own default: what applies where no startup parameter can carry it
            # (PgBouncer in transaction mode, DATABASE_PGBOUNCER); new sessions take it.
            timeout = int(settings.database_statement_timeout_ms)
            await conn.execute(text(f'ALTER ROLE "{role}" SET statement_timeout = {timeout}'))
            if password is not None:
                # Parameters are not allowed in utility statements; quote the literal instead.
                literal = await conn.execute(text("select quote_literal(:p)"), {"p": password})
                await conn.execute(text(f'ALTER ROLE "{role}" PASSWORD {literal.scalar_one()}'))
            database = (await conn.execute(text("select current_database()"))).scalar_one()
            for statement in _grants(role=role, database=database):
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


# What is taken back from the application role on a table, by the table's declared access.
_REVOKED = {
    AppAccess.APPEND_ONLY: "UPDATE, DELETE",
    AppAccess.READ_ONLY: "INSERT, UPDATE, DELETE",
    AppAccess.NONE: "ALL",
}


def _grants(*, role: str, database: str) -> list[str]:
    """Everything the application role may do; anything not granted here is denied. The
    tables' declarations come from `Base.metadata`, complete here because the upgrade that
    `migrate` runs first loads Alembic's env.py, which imports `taskloom.models`."""
    to, everything = f'TO "{role}"', "ALL TABLES IN SCHEMA public"
    statements = [
        f'GRANT CONNECT ON DATABASE "{database}" {to}',
        f"GRANT USAGE ON SCHEMA public {to}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {everything} {to}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public {to}",
        f'REVOKE TRUNCATE, REFERENCES, TRIGGER ON {everything} FROM "{role}"',
    ]
    for access, privileges in _REVOKED.items():
        statements += [
            f'REVOKE {privileges} ON "{table}" FROM "{role}"'
            for table in tables_with_access(Base.metadata, access)
        ]
    return statements
