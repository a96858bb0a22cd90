"""The long-lived resources of one process (engines, Redis client, password hasher), created
once at start-up and reached by routes through `request.app.state.runtime`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from redis.asyncio import Redis

import taskloom.models  # noqa: F401  (every model mapped, whichever command runs)
from taskloom.auth.passwords import Passwords
from taskloom.config import Settings, redact_url
from taskloom.crypto import CredentialCipher
from taskloom.db.engine import Database, check_roles, create_database
from taskloom.observability import tracing
from taskloom.queue.jobs import ExecutionQueue, GdprExportQueue, WebhookQueue
from taskloom.redis import Keys, connect_redis

log = structlog.get_logger("taskloom.runtime")


@dataclass
class Runtime:
    settings: Settings
    database: Database
    redis: Redis
    keys: Keys
    passwords: Passwords
    queue: ExecutionQueue
    gdpr_queue: GdprExportQueue
    cipher: CredentialCipher
    webhook_queue: WebhookQueue

    async def close(self) -> None:
        await self.queue.close()
        await self.gdpr_queue.close()
        await self.webhook_queue.close()
        await self.redis.aclose()
        await self.database.dispose()


async def open_runtime(settings: Settings) -> Runtime:
    """Connect to PostgreSQL and Redis and check the database roles are safe to use."""
    database = create_database(settings)
    tracing.instrument_engines(database.app_engine, database.system_engine, database.export_engine)
    try:
        await check_roles(database)
        redis = await connect_redis(settings)
    except BaseException:
        await database.dispose()
        raise
    log.info(
        "runtime_ready",
        env=settings.taskloom_env.value,
        database=redact_url(settings.app_database_url()),
        key_prefix=settings.key_prefix,
        event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],  # uvloop
    )
    keys = Keys(settings.key_prefix)
    return Runtime(
        settings=settings,
        database=database,
        redis=redis,
        keys=keys,
        passwords=Passwords.from_settings(settings),
        queue=ExecutionQueue(settings, redis, keys),
        gdpr_queue=GdprExportQueue(settings),
        cipher=CredentialCipher.from_settings(settings),
        webhook_queue=WebhookQueue(settings),
    )
