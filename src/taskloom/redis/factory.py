"""Building clients: `create_redis` for REDIS_URL or the master REDIS_SENTINELS name, BullMQ's
connections and options, and `connect_redis` (a client that has answered, or why not)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings
from taskloom.redis.cluster import cluster_client
from taskloom.redis.errors import describe_target, explain_error
from taskloom.redis.sentinel import sentinel_master

log = structlog.get_logger("taskloom.redis")


# Two quick retries (about 0.3 s in all): a blip is absorbed, a bad server or bad credentials
# fail in seconds. (bullmq's own default, 20 retries capped at 20 s, takes ~350 s to fail.)
RETRIES = 2
# BullMQ workers block up to 10 s in BZPOPMIN; their socket timeout must be longer than that.
BULLMQ_SOCKET_TIMEOUT_SECONDS = 30.0
# Under Sentinel, reconnection attempts back off to at most this: a new master is found within
# about this much of its promotion.

# --- the factory -------------------------------------------------------------------------------


def connection_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `redis.asyncio.Redis` from REDIS_URL and the REDIS_* variables.

    The URL is parsed here rather than by redis-py's `from_url`, whose URL options would
    override ours: REDIS_PASSWORD / REDIS_USERNAME must win, and TLS options come only from
    REDIS_TLS_* (Settings rejects `ssl_*` query parameters), so nothing in a URL can quietly
    turn certificate checks off.
    """
    if settings.redis_sentinels:
        return _data_node_kwargs(settings, None, None)
    if not settings.redis_url:
        raise ValueError("REDIS_URL is not set (start the embedded default first)")
    parts = urlsplit(settings.redis_url)
    kwargs: dict[str, Any] = {}
    if parts.scheme == "unix":
        kwargs["unix_socket_path"] = unquote(parts.path)
    else:
        kwargs["host"] = parts.hostname or "localhost"
        kwargs["port"] = parts.port or 6379
        db = dict(parse_qsl(parts.query)).get("db") or parts.path.strip("/") or "0"
        kwargs["db"] = int(db)
    user = unquote(parts.username) if parts.username else None
    kwargs.update(
        _data_node_kwargs(settings, user, unquote(parts.password) if parts.password else None)
    )
    return kwargs


def _data_node_kwargs(
    settings: Settings, url_user: str | None, url_password: str | None
) -> dict[str, Any]:
    """Credentials (REDIS_USERNAME / REDIS_PASSWORD win over the URL's) and TLS of the nodes
    that hold the data: the one server, or under Sentinel its master."""
    kwargs: dict[str, Any] = {}
    username = settings.redis_username or url_user
    password = (
        settings.redis_password.get_secret_value()
        if settings.redis_password is not None and settings.redis_password.get_secret_value()
        else url_password
    )
    if username:
        kwargs["username"] = username
    if password:
        kwargs["password"] = password
    if settings.redis_uses_tls:
        kwargs.update(_tls_kwargs(settings))
    return kwargs


def _tls_kwargs(settings: Settings) -> dict[str, Any]:
    tls: dict[str, Any] = {"ssl": True, "ssl_min_version": ssl.TLSVersion.TLSv1_2}
    if settings.redis_tls_ca_file is not None:
        tls["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_tls_cert_file is not None and settings.redis_tls_key_file is not None:
        tls["ssl_certfile"] = str(settings.redis_tls_cert_file)
        tls["ssl_keyfile"] = str(settings.redis_tls_key_file)
    if settings.redis_tls_verify:
        tls["ssl_cert_reqs"] = "required"
        tls["ssl_check_hostname"] = True
    else:
        log.warning(
            "redis tls verification disabled",
            hint="REDIS_TLS_VERIFY=false: the server's certificate and host name are not "
            "checked, so a machine in the middle can read and change Redis traffic; "
            "set REDIS_TLS_CA_FILE instead",
        )
        tls["ssl_cert_reqs"] = "none"
        tls["ssl_check_hostname"] = False
    return tls


def create_redis(
    settings: Settings,
    *,
    purpose: str = "app",
    decode_responses: bool = True,
    socket_timeout: float | None = None,
) -> Redis:
    """A client for REDIS_URL, for the master REDIS_SENTINELS name, or for the Redis Cluster
    REDIS_URL's node belongs to (REDIS_CLUSTER): TLS and credentials from settings, bounded
    retries, a client name (`taskloom:<purpose>`, visible in CLIENT LIST). It connects lazily;
    see `connect_redis`."""
    timeout = settings.redis_connect_timeout_seconds
    options: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_connect_timeout": timeout,
        "socket_timeout": socket_timeout if socket_timeout is not None else max(timeout, 10.0),
        # TCP keepalive finds dead connections; no `health_check_interval`: its PING is
        # retried on its own and stretched a NOAUTH failure from 0.6 s to 2.5 s (measured).
        "socket_keepalive": True,
        "client_name": f"taskloom:{purpose}",
    }
    if settings.redis_sentinels:
        return sentinel_master(
            settings,
            options,
            node=connection_kwargs(settings),
            tls=_tls_kwargs(settings) if settings.redis_sentinel_tls else {},
        )
    if settings.redis_cluster:
        return cluster_client(settings, options, node=connection_kwargs(settings))
    return Redis(
        **connection_kwargs(settings),
        **options,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


def create_bullmq_connection(settings: Settings, *, purpose: str = "queue") -> Redis:
    """A client for one bullmq Queue / Worker / QueueEvents, which closes it when it closes.

    bullmq needs `decode_responses=True` (otherwise its worker fails with "Missing key for job
    b'1'") and would otherwise build clients that retry for ~350 s; a Worker also runs its
    blocking BZPOPMIN (up to 10 s) over this client, hence the longer socket timeout.
    """
    return create_redis(
        settings,
        purpose=purpose,
        decode_responses=True,
        socket_timeout=BULLMQ_SOCKET_TIMEOUT_SECONDS,
    )


def bullmq_options(settings: Settings, *, purpose: str = "queue", **extra: Any) -> dict[str, Any]:
    """Options for `bullmq.Queue` / `Worker` / `QueueEvents`: a fresh client from this factory
    and the prefix derived from REDIS_KEY_PREFIX (e.g. `production:bull`)."""
    return {
        "connection": create_bullmq_connection(settings, purpose=purpose),
        "prefix": settings.bullmq_prefix,
        **extra,
    }


async def connect_redis(settings: Settings, *, purpose: str = "app") -> Redis:
    """A client that has answered PING, or RedisConnectError within a few seconds. Logs one
    line like `redis connected env=production tls=True key_prefix=production:` (no secret)."""
    client = create_redis(settings, purpose=purpose)
    try:
        # Each retry may wait a full connect timeout; the whole attempt gets one and a half.
        await asyncio.wait_for(_first_ping(client), settings.redis_connect_timeout_seconds * 1.5)
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        await client.aclose()
        raise explain_error(exc, settings) from exc
    except BaseException:
        await client.aclose()
        raise
    log.info(
        "redis connected",
        mode=settings.redis_mode,
        env=settings.taskloom_env.value,
        tls=settings.redis_uses_tls,
        verify=settings.redis_tls_verify if settings.redis_uses_tls else None,
        auth="password" if settings.redis_has_password else "none",
        user=settings.redis_username or urlsplit(settings.redis_url or "").username or None,
        key_prefix=settings.key_prefix,
        target=describe_target(settings),
        purpose=purpose,
    )
    return client


async def _first_ping(client: Redis) -> None:
    """PING. Under Sentinel, ask the Sentinels for the master once first: without a master the
    client would keep retrying for REDIS_FAILOVER_SECONDS, and the start-up should say why at
    once (wrong master name, Sentinels unreachable or refusing the credentials)."""
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has one per node
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.discover_master(pool.service_name)
    await client.ping()
