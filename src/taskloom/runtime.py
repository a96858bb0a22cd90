"""The long-lived resources of one process (engines, Redis client, password hasher, the queues'
producers, the fair scheduler, the outbound HTTP pool), created once at start-up and reached by
routes through `request.app.state.runtime`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from redis.asyncio import Redis

import taskloom.models  # noqa: F401  (every model mapped, whichever command runs)
from taskloom.auth.passwords import Passwords
from taskloom.auth.principal_cache import PrincipalCache
from taskloom.breakers import BREAKERS
from taskloom.config import BreakerSharing, Settings, redact_url
from taskloom.crypto import CredentialCipher
from taskloom.db.engine import Database, check_roles, create_database
from taskloom.observability import tracing
from taskloom.outbound_pool import OutboundPool
from taskloom.queue.fairness import FairScheduler
from taskloom.queue.jobs import Queues, QueueSpec
from taskloom.redis import Keys, connect_redis
from taskloom.shared_breakers import RedisBreakers

log = structlog.get_logger("taskloom.runtime")


@dataclass
class Runtime:
    settings: Settings
    database: Database
    redis: Redis
    keys: Keys
    passwords: Passwords
    cipher: CredentialCipher
    queues: Queues  # every declared queue's producer, by name (`runtime.queues[name]`)
    fair: FairScheduler  # per-organization admission to the queues (queue/fairness.py)
    outbound: OutboundPool  # kept-alive HTTP clients for tools, AI, webhooks, http steps
    # Authenticated principals, trusted while Redis vouches for them (auth/principal_cache.py).
    principals: PrincipalCache = field(
        default_factory=lambda: PrincipalCache(size=0, ttl_seconds=0)
    )
    # Circuit breakers shared through Redis (BREAKER_SHARING=redis), else None: per process.
    shared_breakers: RedisBreakers | None = None
    # Set when the process is told to stop (SIGTERM/SIGINT, before uvicorn waits for open
    # responses): long-lived responses (live event streams) end at once.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        if self.shared_breakers is not None and BREAKERS.store is self.shared_breakers:
            BREAKERS.share(None)
        await self.outbound.aclose()
        await self.queues.close()
        await self.redis.aclose()
        await self.database.dispose()


async def open_runtime(settings: Settings, queues: Sequence[QueueSpec] | None = None) -> Runtime:
    """Connect to PostgreSQL and Redis and check the database roles are safe to use. `queues`
    defaults to every queue the domains declare (taskloom/jobs.py)."""
    if queues is None:
        # Imported here: the list imports every domain, and the domains import this module.
        from taskloom.jobs import QUEUES

        queues = QUEUES
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
    keys = Keys.of(settings)
    shared_breakers = None
    if settings.breaker_sharing == BreakerSharing.REDIS:
        shared_breakers = RedisBreakers(
            redis, keys, cache_seconds=settings.breaker_shared_cache_seconds
        )
        BREAKERS.share(shared_breakers)  # the process's breakers (BREAKERS) are these from now on
    return Runtime(
        settings=settings,
        database=database,
        redis=redis,
        keys=keys,
        passwords=Passwords.from_settings(settings),
        cipher=CredentialCipher.from_settings(settings),
        queues=Queues(queues, settings),
        fair=FairScheduler(redis, keys, settings),
        outbound=OutboundPool.from_settings(settings),
        principals=PrincipalCache(
            size=settings.auth_cache_size, ttl_seconds=settings.auth_cache_ttl_seconds
        ),
        shared_breakers=shared_breakers,
    )
