"""Redis Sentinel: a client of whichever node the Sentinels name master, with retries that
outlast a failover (docs/REDIS.md "Sentinel")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings

FAILOVER_BACKOFF_CAP_SECONDS = 0.25

T = TypeVar("T")

# --- Sentinel ----------------------------------------------------------------------------------


class FailoverRetry(Retry):
    """Retries connection errors, timeouts and READONLY for `seconds` after the first failure,
    backing off to FAILOVER_BACKOFF_CAP_SECONDS: long enough to outlast a failover. Bounded by
    time rather than a count: redis-py nests a reconnection's retries inside the command's, so
    counts multiply, while deadlines add up (a command fails within twice `seconds` when no
    master can be reached at all, usually within `seconds`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            ExponentialBackoff(cap=FAILOVER_BACKOFF_CAP_SECONDS, base=0.05),
            retries=1_000_000,  # the deadline decides
            supported_errors=(RedisConnectionError, RedisTimeoutError, ReadOnlyError),
        )
        self.seconds = seconds

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        deadline: float | None = None
        failures = 0
        while True:
            try:
                return await do()
            except self._supported_errors as error:
                if is_retryable is not None and not is_retryable(error):
                    raise
                failures += 1
                await (fail(error, failures) if with_failure_count else fail(error))
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + self.seconds
                if now >= deadline:
                    raise
                await asyncio.sleep(min(self._backoff.compute(failures), deadline - now))


class _SentinelConnection(SentinelManagedConnection):
    """Reconnects through the Sentinels on every path. redis-py's own reconnection when a
    command is sent on a dropped connection (`send_packed_command`) goes to the address it
    had, the dead master, until the retries run out (redis/redis-py#3874: seen here as a
    command failing 15 s after a failover that took 2 s)."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if retry_socket_connect:  # redis-py reconnecting: ask the Sentinels (connect_to)
            await self.connect()  # type: ignore[no-untyped-call]
        else:  # connect_to, with the address the Sentinels gave
            await super().connect_check_health(check_health, retry_socket_connect=False)


class _SentinelSSLConnection(_SentinelConnection, SSLConnection):
    pass


class SentinelRedis(Redis):
    """The master's client; closing it closes its connections to the Sentinels too."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def sentinel_master(
    settings: Settings, options: dict[str, Any], *, node: dict[str, Any], tls: dict[str, Any]
) -> Redis:
    """A client of whichever node the Sentinels name master of REDIS_SENTINEL_MASTER (`node`:
    the data nodes' credentials and TLS; `tls`: the Sentinels' TLS, under REDIS_SENTINEL_TLS).
    On a failover its connections fail (refused, reset, or READONLY from a demoted master), and
    each reconnection asks the Sentinels again, for up to REDIS_FAILOVER_SECONDS."""
    sentinel_auth: dict[str, Any] = {}
    if settings.redis_sentinel_username:
        sentinel_auth["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password is not None:
        sentinel_auth["password"] = settings.redis_sentinel_password.get_secret_value()
    sentinels = Sentinel(
        settings.redis_sentinel_addresses,
        sentinel_kwargs={
            "socket_connect_timeout": options["socket_connect_timeout"],
            "socket_timeout": options["socket_connect_timeout"],
            "socket_keepalive": True,
            "decode_responses": True,
            **sentinel_auth,
            **tls,
        },
    )
    master: Redis = sentinels.master_for(
        settings.redis_sentinel_master or "",
        redis_class=SentinelRedis,
        connection_class=(
            _SentinelSSLConnection if settings.redis_sentinel_tls else _SentinelConnection
        ),
        **node,
        **options,
        retry=FailoverRetry(settings.redis_failover_seconds),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ReadOnlyError],
    )
    return master
