"""Fixed-window counters in Redis: failed sign-ins per account and per client IP, and a general
per-subject limit (GDPR export and erasure)."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from taskloom.errors import RateLimited
from taskloom.redis import Keys


def account_key(keys: Keys, email: str) -> str:
    # The email is personal data: only its hash reaches Redis.
    digest = hashlib.sha256(email.lower().encode()).hexdigest()[:32]
    return keys("ratelimit", "login", "account", digest)


def _ip_key(keys: Keys, ip: str | None) -> str:
    return keys("ratelimit", "login", "ip", ip or "unknown")


async def ensure_login_allowed(
    *,
    redis: Redis,
    keys: Keys,
    email: str,
    ip: str | None,
    max_per_account: int,
    max_per_ip: int,
) -> None:
    """Raise RateLimited when the account or the IP has used up its failed attempts."""
    by_account, by_ip = account_key(keys, email), _ip_key(keys, ip)
    async with redis.pipeline(transaction=False) as pipe:
        for key in (by_account, by_ip):
            pipe.get(key)
            pipe.ttl(key)
        account_count, account_ttl, ip_count, ip_ttl = await pipe.execute()
    if account_count is not None and int(account_count) >= max_per_account:
        raise RateLimited(
            "too many failed sign-in attempts for this account; try again later",
            retry_after=int(account_ttl),
        )
    if ip_count is not None and int(ip_count) >= max_per_ip:
        raise RateLimited(
            "too many failed sign-in attempts from this address; try again later",
            retry_after=int(ip_ttl),
        )


async def record_login_failure(
    *, redis: Redis, keys: Keys, email: str, ip: str | None, window_seconds: int
) -> None:
    # SET NX starts the window (and its expiry) once; INCR keeps the TTL. Works on Redis 6.2,
    # which lacks EXPIRE ... NX.
    async with redis.pipeline(transaction=True) as pipe:
        for key in (account_key(keys, email), _ip_key(keys, ip)):
            pipe.set(key, 0, ex=window_seconds, nx=True)
            pipe.incr(key)
        await pipe.execute()


async def clear_account_failures(*, redis: Redis, keys: Keys, email: str) -> None:
    await redis.delete(account_key(keys, email))


async def consume(*, redis: Redis, key: str, limit: int, window_seconds: int, what: str) -> None:
    """Count one use of `key` in its window; RateLimited (429 + Retry-After) past `limit`."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window_seconds, nx=True)
        pipe.incr(key)
        pipe.ttl(key)
        _, used, ttl = await pipe.execute()
    if int(used) > limit:
        raise RateLimited(
            f"too many {what} requests; try again later", retry_after=max(int(ttl), 1)
        )
