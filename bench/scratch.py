"""A deployment of a benchmark's (or test's) own on shared servers: a database, its application
role and a Redis key prefix, migrated; on exit the database and role are dropped and the prefix's
keys UNLINKed (SCAN, never FLUSH), so nothing is left on the servers.

Importable as `bench.scratch` (tests) and as `scratch` (a script run as `python bench/x.py`)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from taskloom.config import Settings
from taskloom.db.migrate import migrate
from taskloom.redis import Keys, create_redis, purge_matching


@asynccontextmanager
async def scratch_deployment(
    pg_url: str, redis_url: str | None, *, label: str, **overrides: Any
) -> AsyncIterator[Settings]:
    """Settings for `taskloom_<label>_<suffix>` (role `taskloom_app_<label>_<suffix>`, key
    prefix `<label>-<suffix>:`): test-speed password hashing, `taskloom_env=test`, and
    `overrides` on top (`redis_url` None with `redis_sentinels` in them: Redis through
    Sentinel)."""
    suffix = secrets.token_hex(4)
    database = f"taskloom_{label}_{suffix}"
    values: dict[str, Any] = {
        "taskloom_env": "test",
        "database_url": make_url(pg_url).set(database=database).render_as_string(False),
        "database_app_role": f"taskloom_app_{label}_{suffix}",
        "redis_url": redis_url,
        "redis_key_prefix": f"{label}-{suffix}:",
        "password_hash_time_cost": 1,
        "password_hash_memory_kib": 1024,
        "password_hash_parallelism": 1,
        "log_level": "warning",
        **overrides,
    }
    settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    admin = await asyncpg.connect(pg_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        await migrate(settings)
        yield settings
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'DROP ROLE IF EXISTS "{settings.database_app_role}"')
        await admin.close()
        redis = create_redis(settings, purpose="scratch-cleanup")
        try:
            await purge_matching(redis, Keys(settings.key_prefix).pattern)
        finally:
            await redis.aclose()
