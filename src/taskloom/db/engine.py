"""The engines. `app` is the tenant-isolated role used for all request work; `system` is
privileged (bypasses row-level security) and is used only where a function says so by name:
resolving credentials before a tenant is known, migrations and cross-tenant maintenance.
`export` is the privileged role again, in a small pool of its own for GDPR data exports, which
hold a connection for as long as their client reads: however many stall, sign-in (on `system`)
never waits for them. `system` and `export` connect directly (DATABASE_URL); `app` may go
through PgBouncer in transaction mode (DATABASE_PGBOUNCER, docs/SCALING.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import event, text
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from taskloom.config import Settings
from taskloom.db.urls import async_url


class UnsafeDatabaseRoles(RuntimeError):
    """The configured roles would not give tenant isolation."""


@dataclass
class Database:
    app_engine: AsyncEngine
    system_engine: AsyncEngine
    app_sessions: async_sessionmaker[AsyncSession]
    system_sessions: async_sessionmaker[AsyncSession]
    export_engine: AsyncEngine

    async def dispose(self) -> None:
        await self.app_engine.dispose()
        await self.system_engine.dispose()
        await self.export_engine.dispose()


# How long an export waits for a free export connection before it is turned away (503): a
# short wait, since the next one frees only when an export ends or is abandoned.
EXPORT_POOL_WAIT_SECONDS = 1.0


def _engine(
    url: str,
    *,
    settings: Settings,
    pool_size: int,
    application_name: str,
    pool_timeout: float = 30.0,
    server_settings: dict[str, str] | None = None,
    through_pgbouncer: bool = False,
) -> AsyncEngine:
    """An engine of `pool_size` kept connections. `through_pgbouncer` (PgBouncer in transaction
    mode, which gives each transaction whichever server connection is free): no prepared
    statement outlives its use (asyncpg then sends every statement unnamed, parsed again with
    its parameters), and the only startup parameter is one PgBouncer passes on."""
    cache_size = 0 if through_pgbouncer else settings.database_statement_cache_size
    startup = {"application_name": application_name}
    if not through_pgbouncer:
        startup["statement_timeout"] = str(settings.database_statement_timeout_ms)
        startup.update(server_settings or {})
    engine = create_async_engine(
        async_url(url).update_query_dict({"prepared_statement_cache_size": str(cache_size)}),
        json_deserializer=json_value,
        # Every connection is kept once opened: with overflow, each one opened past the pool under
        # steady concurrency was closed again on return, a PostgreSQL backend forked (and TLS
        # tried) per burst: about a tenth of the API's CPU at 150 executions/s.
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        connect_args={
            "server_settings": startup,
            "timeout": 10,
            "statement_cache_size": cache_size,
        },
    )
    _ping_after_idle(engine, settings.database_ping_after_idle_seconds)
    return engine


_JSON = msgspec.json.Decoder()


def json_value(text: str) -> Any:
    """A JSON column's value, as `json.loads` gives it, about four times faster (msgspec): a
    list of 50 workflows spent a fifth of its CPU decoding definitions. Numbers a double cannot
    hold, which jsonb keeps as numeric, are left to `json` (inf, as ever); integers stay exact."""
    try:
        return _JSON.decode(text)
    except msgspec.DecodeError:
        return json.loads(text)


def _ping_after_idle(engine: AsyncEngine, idle_seconds: float) -> None:
    """SQLAlchemy's `pool_pre_ping` checks every connection it hands out; for asyncpg that is
    BEGIN, `;`, ROLLBACK — three round trips on every transaction, more than a typical request's
    own statements. A connection back in the pool a moment ago is as alive as the last statement
    proved, so only one idle for `idle_seconds` or more (when firewalls, PgBouncer and server
    restarts bite) is pinged. A connection that died while in busy use fails its next statement;
    SQLAlchemy then invalidates every pooled connection of that age, so one request per process
    sees a 503 (Retry-After) and the next ones get fresh connections."""

    @event.listens_for(engine.sync_engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < idle_seconds:
            return  # new, or used moments ago
        try:
            dbapi_connection.ping()
        except Exception as dead:
            # The pool discards the connection and checks out another (up to three times).
            raise DisconnectionError("pooled connection failed its ping") from dead


def create_database(settings: Settings) -> Database:
    """Build the engines from the settings (no connection is made yet)."""
    if not settings.database_url:
        raise ValueError("DATABASE_URL is not set")
    app_engine = _engine(
        settings.app_database_url(),
        settings=settings,
        pool_size=settings.database_pool_size,
        application_name="taskloom-app",
        through_pgbouncer=settings.database_pgbouncer,
    )
    system_engine = _engine(
        settings.database_url,
        settings=settings,
        pool_size=max(2, settings.database_pool_size // 4),
        application_name="taskloom-system",
    )
    return Database(
        app_engine=app_engine,
        system_engine=system_engine,
        app_sessions=async_sessionmaker(app_engine, expire_on_commit=False),
        system_sessions=async_sessionmaker(system_engine, expire_on_commit=False),
        export_engine=_export_engine(settings.database_url, settings=settings),
    )


def _export_engine(url: str, *, settings: Settings) -> AsyncEngine:
    """Privileged (a person's rows span organizations), bounded: no overflow, a short wait, and
    server-side deadlines on every statement and on a transaction left idle."""

    def ms(seconds: float) -> str:
        return str(max(1, round(seconds * 1000)))

    return _engine(
        url,
        settings=settings,
        pool_size=settings.gdpr_export_pool_size,
        application_name="taskloom-export",
        pool_timeout=EXPORT_POOL_WAIT_SECONDS,
        server_settings={
            "statement_timeout": ms(settings.gdpr_export_statement_timeout_seconds),
            "idle_in_transaction_session_timeout": ms(
                settings.gdpr_export_idle_in_transaction_timeout_seconds
            ),
        },
    )


async def app_role_problems(database: Database) -> tuple[str, list[str]]:
    """The application role's name and what makes it unfit for tenant isolation (if anything):
    superuser, BYPASSRLS, or owning tables (owners could turn RLS off)."""
    async with database.app_engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "select current_user as name, r.rolsuper, r.rolbypassrls, "
                    "(select count(*) from pg_tables where schemaname = 'public' "
                    " and tableowner = current_user) as owned "
                    "from pg_roles r where r.rolname = current_user"
                )
            )
        ).one()
    checks = (
        ("is a superuser", row.rolsuper),
        ("has BYPASSRLS", row.rolbypassrls),
        (f"owns {row.owned} table(s)", row.owned),
    )
    return row.name, [what for what, bad in checks if bad]


async def check_roles(database: Database) -> None:
    """Refuse to run when the app role could bypass RLS or the system role could not."""
    name, problems = await app_role_problems(database)
    if problems:
        raise UnsafeDatabaseRoles(
            f"the application role {name!r} must not be a superuser, must not have "
            f"BYPASSRLS and must not own tables (it {', '.join(problems)}); point "
            "DATABASE_APP_URL at the role that `taskloom migrate` creates"
        )
    async with database.system_engine.connect() as conn:
        row = (
            await conn.execute(
                text("select rolsuper, rolbypassrls from pg_roles where rolname = current_user")
            )
        ).one()
    if not (row.rolsuper or row.rolbypassrls):
        raise UnsafeDatabaseRoles(
            "the role of DATABASE_URL is used for migrations and cross-tenant maintenance and "
            "needs BYPASSRLS (row-level security is FORCEd, so even table owners see no rows)"
        )
