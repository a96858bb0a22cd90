"""Evaluating feature flags for one (organization, user), and caching the answers in Redis.

Order, first match wins (docs/FLAGS.md):
1. a user override: for the user in this organization, else for the user everywhere (org-less,
   set by an instance administrator);
2. an org override: for the whole organization;
3. the rollout: when the flag has a `rollout_percentage`, the organization is in or out by a
   hash of flag key and org id (so one organization gets one answer, always);
4. the flag's `default_enabled`.
Expired overrides (`expires_at <= now`) are ignored. Unknown keys are off, source "unknown".

Cache: every evaluation of one (org, user) is one JSON entry under the key generation read
*before* the database; every change INCRs the generation after its commit, so all cached
answers are invalidated at once. Redis failing only costs the cache, never the answer.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.auth.principal import Principal
from taskloom.errors import NotFound
from taskloom.flags.models import FeatureFlag, FeatureFlagOverride
from taskloom.redis import Cache, Keys

log = structlog.get_logger("taskloom.flags")

Source = Literal["user_override", "org_override", "rollout", "default", "unknown"]

CACHE_TTL_SECONDS = 30
_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


@dataclass(frozen=True)
class Flag:
    key: str
    default_enabled: bool
    rollout_percentage: int | None


@dataclass(frozen=True)
class Override:
    org_id: uuid.UUID | None
    user_id: uuid.UUID | None
    enabled: bool
    expires_at: datetime | None = None
    created_at: datetime | None = None

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class Decision:
    enabled: bool
    source: Source


UNKNOWN = Decision(enabled=False, source="unknown")


def rollout_bucket(flag_key: str, org_id: uuid.UUID) -> int:
    """The organization's bucket 0..99 for this flag: the first 32 bits of
    sha256("<flag key>:<org id>") modulo 100. Stable across processes and releases."""
    digest = hashlib.sha256(f"{flag_key}:{org_id}".encode()).hexdigest()
    return int(digest[:8], 16) % 100


def in_rollout(flag_key: str, org_id: uuid.UUID, percentage: int) -> bool:
    """Whether the organization is among the first `percentage` buckets (0: none, 100: all)."""
    return rollout_bucket(flag_key, org_id) < percentage


def _newest(overrides: Iterable[Override]) -> Override | None:
    # The API keeps one override per scope; if a race ever left two, the newer one counts.
    ordered = sorted(overrides, key=lambda o: o.created_at or datetime.min.replace(tzinfo=UTC))
    return ordered[-1] if ordered else None


def decide(
    *,
    flag: Flag,
    overrides: Sequence[Override],
    org_id: uuid.UUID,
    user_id: uuid.UUID,
    now: datetime,
) -> Decision:
    """The answer for one flag; `overrides` may hold any of the flag's overrides (others' and
    expired ones are ignored here)."""
    active = [o for o in overrides if o.active(now)]
    for scope in (org_id, None):  # the user in this org first, then the user everywhere
        mine = _newest(o for o in active if o.user_id == user_id and o.org_id == scope)
        if mine is not None:
            return Decision(mine.enabled, "user_override")
    org_wide = _newest(o for o in active if o.org_id == org_id and o.user_id is None)
    if org_wide is not None:
        return Decision(org_wide.enabled, "org_override")
    if flag.rollout_percentage is not None:
        return Decision(in_rollout(flag.key, org_id, flag.rollout_percentage), "rollout")
    return Decision(flag.default_enabled, "default")


@dataclass(frozen=True)
class Evaluation:
    decisions: dict[str, Decision]
    # When the first override that counted here expires (the answer may change then).
    changes_at: datetime | None = None

    def pick(self, keys: Sequence[str] | None) -> dict[str, Decision]:
        """The decisions for `keys` (unknown keys: off, "unknown"), or all of them."""
        if keys is None:
            return dict(sorted(self.decisions.items()))
        return {key: self.decisions.get(key, UNKNOWN) for key in keys}


async def evaluate(
    *, db: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID, now: datetime | None = None
) -> Evaluation:
    """Every flag for (org, user), read from the database (within the caller's tenant scope)."""
    now = now or datetime.now(UTC)
    flags = (
        await db.execute(
            select(
                FeatureFlag.id,
                FeatureFlag.key,
                FeatureFlag.default_enabled,
                FeatureFlag.rollout_percentage,
            )
        )
    ).all()
    o = FeatureFlagOverride
    rows = (
        await db.execute(
            select(o.flag_id, o.org_id, o.user_id, o.enabled, o.expires_at, o.created_at).where(
                or_(
                    and_(o.org_id == org_id, o.user_id.is_(None)),
                    and_(o.user_id == user_id, or_(o.org_id == org_id, o.org_id.is_(None))),
                )
            )
        )
    ).all()
    by_flag: dict[uuid.UUID, list[Override]] = {}
    for row in rows:
        by_flag.setdefault(row.flag_id, []).append(
            Override(row.org_id, row.user_id, row.enabled, row.expires_at, row.created_at)
        )
    decisions = {
        f.key: decide(
            flag=Flag(f.key, f.default_enabled, f.rollout_percentage),
            overrides=by_flag.get(f.id, []),
            org_id=org_id,
            user_id=user_id,
            now=now,
        )
        for f in flags
    }
    expiries = [
        ov.expires_at
        for overrides in by_flag.values()
        for ov in overrides
        if ov.expires_at is not None and ov.expires_at > now
    ]
    return Evaluation(decisions, min(expiries) if expiries else None)


async def evaluate_for(
    *,
    redis: Redis,
    keys: Keys,
    db: AsyncSession,
    principal: Principal,
    wanted: Sequence[str] | None,
) -> dict[str, Decision]:
    """The caller's flags in their current organization: `wanted` ones, or all (cached)."""
    if principal.org_id is None:
        raise NotFound("no current organization")
    result = await evaluate_cached(
        redis=redis, keys=keys, db=db, org_id=principal.org_id, user_id=principal.user_id
    )
    return result.pick(wanted)


# --- the cache -----------------------------------------------------------------------------------


def generation_key(keys: Keys) -> str:
    return keys("flags", "generation")


def _cache(redis: Redis, keys: Keys) -> Cache:
    return Cache(redis, keys, "flags")


def cache_ttl(evaluation: Evaluation, now: datetime) -> int:
    """At most CACHE_TTL_SECONDS, and never past the next override expiry."""
    if evaluation.changes_at is None:
        return CACHE_TTL_SECONDS
    left = math.ceil((evaluation.changes_at - now).total_seconds())
    return max(1, min(CACHE_TTL_SECONDS, left))


async def evaluate_cached(
    *, redis: Redis, keys: Keys, db: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID
) -> Evaluation:
    """`evaluate`, through the cache. The entry's scope is the user (`user:<id>`), so GDPR
    erasure's purge of a person's cached data removes it."""
    scope, generation = f"user:{user_id}", None
    try:
        # Read the generation before the database: an answer computed from data older than a
        # change is then stored under the old generation, which nobody reads any more.
        generation = int(await redis.get(generation_key(keys)) or 0)
        cached = await _cache(redis, keys).get(scope, f"{generation}:{org_id}")
    except _REDIS_FAILURES as exc:
        log.warning("flag_cache_unavailable", error=type(exc).__name__)
        cached = None
    if isinstance(cached, dict):
        return Evaluation({k: Decision(bool(v[0]), v[1]) for k, v in cached.items()})
    now = datetime.now(UTC)
    evaluation = await evaluate(db=db, org_id=org_id, user_id=user_id, now=now)
    if generation is not None:
        value = {k: [d.enabled, d.source] for k, d in evaluation.decisions.items()}
        try:
            await _cache(redis, keys).set(
                scope, f"{generation}:{org_id}", value, ttl_seconds=cache_ttl(evaluation, now)
            )
        except _REDIS_FAILURES as exc:
            log.warning("flag_cache_unavailable", error=type(exc).__name__)
    return evaluation


async def invalidate(*, redis: Redis, keys: Keys) -> None:
    """Start a new generation: every cached evaluation is stale at once. If Redis fails, cached
    answers live out their TTL (at most CACHE_TTL_SECONDS)."""
    try:
        await redis.incr(generation_key(keys))
    except _REDIS_FAILURES as exc:
        log.warning("flag_cache_invalidation_failed", error=type(exc).__name__)
