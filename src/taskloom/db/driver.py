"""The asyncpg connection itself, for the few statements on the hot path (an execution's start,
a worker's claim and its steps' writes). SQLAlchemy costs about 1 ms of CPU per statement
around asyncpg's 0.1 ms; these statements are plain SQL, and the worker's are SQL functions that
set the tenant themselves (migration 0016), each called in autocommit: one round trip, one
transaction, row-level security forced as everywhere else (the application role's connections,
from the same pool). Errors are raised as SQLAlchemy's (`IntegrityError`, `DBAPIError`, ...),
as every caller expects.

Everything else goes through SQLAlchemy: this is for statements that run once or more per
execution, where the difference is the product's throughput."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.util import greenlet_spawn

from taskloom.db.engine import Database


class Statements:
    """asyncpg's `fetchrow`, `fetchval` and `execute` on one pooled connection, raising
    SQLAlchemy's exceptions. JSON parameters are passed as JSON text; JSON results come
    decoded. A connection found closed is invalidated (`invalidate`: not pooled again) and
    its error says so (`connection_invalidated`: PostgreSQL unavailable, a 503 or a job put
    back, errors.unavailable_dependency), as SQLAlchemy does for its own statements."""

    def __init__(self, adapted: Any, invalidate: Callable[[], Awaitable[Any]]) -> None:
        self._adapted = adapted  # SQLAlchemy's adapter of the asyncpg connection
        self._invalidate = invalidate
        self.connection = adapted.driver_connection

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._call(self.connection.fetch, query, args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> Any:
        return await self._call(self.connection.fetchrow, query, args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._call(self.connection.fetchval, query, args)

    async def execute(self, query: str, *args: Any) -> Any:
        return await self._call(self.connection.execute, query, args)

    async def invalidate(self) -> None:
        """Close the connection and keep it out of the pool."""
        await self._invalidate()

    async def begin(self) -> None:
        """BEGIN, as SQLAlchemy's adapter sends it (and then commits or rolls back)."""
        await self._call(lambda _query: self._adapted._start_transaction(), "BEGIN", ())

    async def _call(
        self, method: Callable[..., Awaitable[Any]], query: str, args: tuple[Any, ...]
    ) -> Any:
        try:
            return await method(query, *args)
        except Exception as error:
            closed = self.connection.is_closed()
            if closed:
                await self._invalidate()
            try:
                self._adapted._handle_exception(error)  # raises the DB-API error for it
            except Exception as translated:
                raise DBAPIError.instance(
                    query,
                    args,
                    translated,
                    self._adapted.dbapi.Error,
                    connection_invalidated=closed,
                ) from error
            raise  # pragma: no cover - _handle_exception always raises


@asynccontextmanager
async def app_connection(database: Database) -> AsyncIterator[Statements]:
    """An application-role connection from the pool, outside any transaction (each statement
    commits on its own). A connection that broke is discarded, not pooled again."""
    proxied = await database.app_engine.raw_connection()

    async def invalidate() -> None:
        await greenlet_spawn(proxied.invalidate)

    statements = Statements(proxied.dbapi_connection, invalidate)
    try:
        yield statements
    except BaseException:
        if statements.connection.is_closed() and proxied.is_valid:
            await invalidate()
        raise
    finally:
        await greenlet_spawn(proxied.close)


async def session_connection(session: AsyncSession | AsyncConnection) -> Statements:
    """The connection under `session`'s transaction: a statement sent on it is part of that
    transaction, committed or rolled back with it, and unseen by the session's ORM state.
    SQLAlchemy sends BEGIN only with its first statement; if none has gone yet, BEGIN goes now
    (a statement sent before it would commit on its own, outside the transaction)."""
    connection = await session.connection() if isinstance(session, AsyncSession) else session
    raw = await connection.get_raw_connection()
    adapted: Any = raw.dbapi_connection  # SQLAlchemy's adapter of the asyncpg connection
    statements = Statements(adapted, connection.invalidate)
    if adapted._transaction is None and not adapted.autocommit:
        await statements.begin()
    return statements
