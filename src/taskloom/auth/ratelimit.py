"""Failed-login counters in Redis, per account and per client IP (fixed windows)."""

from __future__ import annotations

import hashlib

from redis.asyncio import Redis

from taskloom.errors import RateLimited
from taskloom.redis import Keys


def _account_key(keys: Keys, email: str) -> str:
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
    account_key, ip_key = _account_key(keys, email), _ip_key(keys, ip)
    async with redis.pipeline(transaction=False) as pipe:
        for key in (account_key, ip_key):
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
        for key in (_account_key(keys, email), _ip_key(keys, ip)):
            pipe.set(key, 0, ex=window_seconds, nx=True)
            pipe.incr(key)
        await pipe.execute()


async def clear_account_failures(*, redis: Redis, keys: Keys, email: str) -> None:
    await redis.delete(_account_key(keys, email))
