"""Pooled connections against a real PostgreSQL: one that died while idle is replaced without
the caller noticing; one that died in busy use fails one transaction, then the pool recovers;
more callers than the pool holds wait for its connections rather than opening and closing more."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from taskloom.config import Settings
from taskloom.db.driver import app_connection
from taskloom.db.engine import Database, create_database
from taskloom.errors import unavailable_dependency


async def _backend_pid(database: Database) -> int:
    async with database.app_engine.connect() as conn:
        return int((await conn.execute(text("select pg_backend_pid()"))).scalar_one())


async def _terminate(settings: Settings, pid: int) -> None:
    """What a server restart, a failover or an idle-timeout in a proxy does to a connection."""
    admin = await asyncpg.connect(settings.database_url)
    try:
        assert await admin.fetchval("select pg_terminate_backend($1)", pid)
        for _ in range(100):  # wait until the backend is gone
            if not await admin.fetchval("select count(*) from pg_stat_activity where pid=$1", pid):
                return
            await asyncio.sleep(0.02)
    finally:
        await admin.close()


async def _pool_of_one(settings: Settings, idle_seconds: float) -> Database:
    return create_database(
        settings.model_copy(
            update={"database_pool_size": 1, "database_ping_after_idle_seconds": idle_seconds}
        )
    )


async def test_a_connection_that_died_while_idle_is_replaced_unnoticed(settings: Settings) -> None:
    database = await _pool_of_one(settings, idle_seconds=0.2)
    try:
        first = await _backend_pid(database)
        await _terminate(settings, first)
        await asyncio.sleep(0.3)  # idle longer than the threshold: pinged at checkout
        second = await _backend_pid(database)
        assert second != first
    finally:
        await database.dispose()


async def test_a_connection_used_moments_ago_is_not_pinged_and_recovers_after_one_failure(
    settings: Settings,
) -> None:
    database = await _pool_of_one(settings, idle_seconds=3600)
    try:
        first = await _backend_pid(database)
        await _terminate(settings, first)
        # Not pinged (that is the saving): the dead connection fails this one transaction...
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(database)
        assert failed.value.connection_invalidated
        # ...and the pool, having invalidated it, hands out a fresh one next.
        assert await _backend_pid(database) != first
    finally:
        await database.dispose()


async def test_a_hot_path_call_on_a_dead_connection_fails_once_as_unavailable_then_recovers(
    settings: Settings,
) -> None:
    """db/driver.py: the asyncpg connection used directly fails like SQLAlchemy's own would
    (PostgreSQL unavailable: a 503, a job put back), and is not pooled again."""
    database = await _pool_of_one(settings, idle_seconds=3600)
    try:
        async with app_connection(database) as statements:
            first = await statements.fetchval("select pg_backend_pid()")
        await _terminate(settings, first)
        with pytest.raises(DBAPIError) as failed:
            async with app_connection(database) as statements:
                await statements.fetchval("select 1")
        assert failed.value.connection_invalidated
        assert unavailable_dependency(failed.value) == "PostgreSQL"
        async with app_connection(database) as statements:
            assert await statements.fetchval("select pg_backend_pid()") != first
    finally:
        await database.dispose()


async def test_more_callers_than_the_pool_holds_share_its_connections_and_none_is_reopened(
    settings: Settings,
) -> None:
    """Overflow connections were closed on return under steady concurrency: a PostgreSQL
    backend forked (and TLS tried) per burst. Now the pool's connections are all there is."""
    database = create_database(settings.model_copy(update={"database_pool_size": 2}))
    backends: set[int] = set()

    async def call() -> None:
        async with database.app_engine.connect() as conn:
            backends.add(int((await conn.execute(text("select pg_backend_pid()"))).scalar_one()))
            await conn.execute(text("select pg_sleep(0.02)"))

    try:
        for _ in range(3):  # three bursts of six callers on a pool of two
            await asyncio.gather(*(call() for _ in range(6)))
        assert len(backends) == 2
        assert database.app_engine.pool.checkedin() == 2  # type: ignore[attr-defined]
    finally:
        await database.dispose()
