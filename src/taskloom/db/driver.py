"""The asyncpg connection itself, for the few statements on the hot path (a worker's claim and
its steps' writes). SQLAlchemy costs about 1 ms of CPU per statement around asyncpg's 0.1 ms;
there the statements are plain SQL functions that set the tenant themselves (migration 0016),
each called in autocommit: one round trip, one transaction, row-level security forced as
everywhere else (the application role's connections, from the same pool).

Everything else goes through SQLAlchemy: this is for statements that run once or more per
execution, where the difference is the product's throughput."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.util import greenlet_spawn

from taskloom.db.engine import Database


@asynccontextmanager
async def app_connection(database: Database) -> AsyncIterator[Any]:
    """An application-role asyncpg connection from the pool, outside any transaction (each
    statement commits on its own). A connection that broke is discarded, not pooled again."""
    proxied = await database.app_engine.raw_connection()
    connection = proxied.driver_connection
    try:
        yield connection
    except BaseException:
        if connection is None or connection.is_closed():
            await greenlet_spawn(proxied.invalidate)
        raise
    finally:
        await greenlet_spawn(proxied.close)
