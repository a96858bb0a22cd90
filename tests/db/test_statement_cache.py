"""DATABASE_STATEMENT_CACHE_SIZE: prepared statements stay on a connection by default (each
statement is parsed once per connection); with 0 none outlives its use, as a pooler that moves
a client between server connections (PgBouncer in transaction mode before 1.21) requires."""

from __future__ import annotations

from sqlalchemy import text

from taskloom.config import Settings
from taskloom.db.driver import app_connection
from taskloom.db.engine import create_database


async def _prepared_after_use(settings: Settings, cache_size: int) -> int:
    """Named statements left on the (only) pooled connection after the hot path's and
    SQLAlchemy's statements ran on it, three times each."""
    database = create_database(
        settings.model_copy(
            update={"database_pool_size": 1, "database_statement_cache_size": cache_size}
        )
    )
    try:
        async with app_connection(database) as statements:
            for _ in range(3):
                assert await statements.fetchval("select $1::int + 1", 41) == 42
        async with database.app_engine.connect() as conn:
            for _ in range(3):
                assert (await conn.execute(text("select :n + 1"), {"n": 1})).scalar_one() == 2
            left = await conn.execute(text("select count(*) from pg_prepared_statements"))
            return int(left.scalar_one())
    finally:
        await database.dispose()


async def test_statements_stay_prepared_by_default_and_none_does_with_a_cache_of_0(
    settings: Settings,
) -> None:
    assert await _prepared_after_use(settings, 100) >= 2
    assert await _prepared_after_use(settings, 0) == 0
