"""Revocation stamps: how a change that ends or reduces someone's access reaches every API
process's principal cache (taskloom/auth/principal_cache.py) at once.

The code that makes such a change marks the person on its transaction (`mark(db, user_id)`,
next to the write); whoever committed that transaction then publishes the marks (`publish`):
the request context after its commit (taskloom/auth/deps.py), the system transactions of
sign-in, refresh, password setting and erasure after theirs. Publishing increments each
person's stamp in Redis, so every process's cached principals of that person stop being
trusted, and drops them from this process's cache. It happens after the commit (a lookup that
refills a cache entry meanwhile reads the committed change) and before the response is sent.

If Redis cannot be reached, the other processes cannot be told: they too find Redis down and
fall back to PostgreSQL, and an entry outlives a missed increment by at most
AUTH_CACHE_TTL_SECONDS (docs/SECURITY.md "Principal cache").
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

import structlog
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.auth import principal_cache

if TYPE_CHECKING:
    from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.auth")

_MARKS = "taskloom.auth.revoked_users"


def mark(db: AsyncSession, *user_ids: uuid.UUID) -> None:
    """Note, in the transaction that changes it, that these people's access changes."""
    marks(db).update(user_ids)


def marked(db: AsyncSession) -> set[uuid.UUID] | None:
    """The people marked on this transaction (read before it commits, publish after)."""
    found: set[uuid.UUID] | None = db.info.get(_MARKS)
    return found


def marks(db: AsyncSession) -> set[uuid.UUID]:
    """The people marked on this transaction so far (the set itself: read it after commit)."""
    found: set[uuid.UUID] = db.info.setdefault(_MARKS, set())
    return found


async def publish(runtime: Runtime, user_ids: Iterable[uuid.UUID]) -> None:
    """Invalidate these people's cached principals in every process (call after the commit)."""
    users = set(user_ids)
    if not users:
        return
    runtime.principals.forget_users(users)
    try:
        await principal_cache.bump(
            redis=runtime.redis, keys=runtime.keys, settings=runtime.settings, user_ids=users
        )
    except RedisError:
        # Committed all the same; this process trusts no cached principal until Redis answers.
        runtime.principals.clear()
        log.warning("revocation_not_published", users=len(users))
