"""The single Redis connection factory and key helper. No other module constructs a Redis
client or writes a key that is not built by `Keys`, so the environment prefix is on every key.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings


class Keys:
    """Builds every Redis key: `<prefix><part>:<part>…`, e.g. `production:ratelimit:login:…`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment."""
        return self.prefix.replace("[", "\\[").replace("*", "\\*").replace("?", "\\?") + "*"


def create_redis(settings: Settings, *, decode_responses: bool = True) -> Redis:
    """A client for REDIS_URL with bounded retries, so a bad server fails in seconds."""
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set")
    timeout = settings.redis_connect_timeout_seconds
    return Redis.from_url(
        settings.redis_url,
        decode_responses=decode_responses,
        socket_connect_timeout=timeout,
        socket_timeout=max(timeout, 10.0),
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
