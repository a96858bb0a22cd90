"""The single Redis connection factory and key helper.

Every Redis client Taskloom uses (the app client, rate limits, caches and BullMQ's connections)
is built here from the one set of REDIS_* settings, and every key is built by `Keys`, so TLS,
credentials, bounded retries and the environment prefix apply to all of them. A test fails if
another module constructs a client. See docs/REDIS.md for operators.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import structlog
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, ReadOnlyError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskloom.config import Settings, redact_url

log = structlog.get_logger("taskloom.redis")

# Two quick retries (about 0.3 s in all): a blip is absorbed, a bad server or bad credentials
# fail in seconds. (bullmq's own default, 20 retries capped at 20 s, takes ~350 s to fail.)
RETRIES = 2
# BullMQ workers block up to 10 s in BZPOPMIN; their socket timeout must be longer than that.
BULLMQ_SOCKET_TIMEOUT_SECONDS = 30.0
# Under Sentinel, reconnection attempts back off to at most this: a new master is found within
# about this much of its promotion.
FAILOVER_BACKOFF_CAP_SECONDS = 0.25

T = TypeVar("T")


class Keys:
    """Builds every Redis key: `<prefix><part>:<part>…`, e.g. `production:ratelimit:login:…`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def tagged(self, name: str) -> str:
        """`<prefix>{<prefix><name>}`: a base for keys one Lua script touches together. They
        share the hash tag, so a Redis Cluster keeps them in one slot, and they still start
        with the prefix (ACL key patterns, SCAN purges). A prefix that is itself a hash tag
        (`{production}:`) wins, as for every other key."""
        return f"{self.prefix}{{{self.prefix}{name}}}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this deployment."""
        return self.match()

    def match(self, *parts: str) -> str:
        """A SCAN pattern for every key under `parts` (the prefix holds no glob characters)."""
        return self(*parts, "*") if parts else self.prefix + "*"


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
    """A client for REDIS_URL, or for the master REDIS_SENTINELS name: TLS and credentials from
    settings, bounded retries, a client name (`taskloom:<purpose>`, visible in CLIENT LIST). It
    connects lazily; see `connect_redis`."""
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
        return _sentinel_master(settings, options)
    return Redis(
        **connection_kwargs(settings),
        **options,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), RETRIES),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


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


def _sentinel_master(settings: Settings, options: dict[str, Any]) -> Redis:
    """A client of whichever node the Sentinels name master of REDIS_SENTINEL_MASTER. On a
    failover its connections fail (refused, reset, or READONLY from a demoted master), and each
    reconnection asks the Sentinels again, for up to REDIS_FAILOVER_SECONDS."""
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
            **(_tls_kwargs(settings) if settings.redis_sentinel_tls else {}),
        },
    )
    master: Redis = sentinels.master_for(
        settings.redis_sentinel_master or "",
        redis_class=SentinelRedis,
        connection_class=(
            _SentinelSSLConnection if settings.redis_sentinel_tls else _SentinelConnection
        ),
        **connection_kwargs(settings),
        **options,
        retry=FailoverRetry(settings.redis_failover_seconds),
        retry_on_error=[RedisConnectionError, RedisTimeoutError, ReadOnlyError],
    )
    return master


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


# --- connecting and explaining failures --------------------------------------------------------


class RedisConnectError(RuntimeError):
    """Redis could not be used. `cause` is one of: refused, unreachable, timeout, tls_verify,
    tls_client_cert, tls_handshake, closed, auth, noauth, noperm, error. The message names the
    target (without its password) and what to check."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def describe_target(settings: Settings) -> str:
    """REDIS_URL without any password, or the Sentinel master's name and the Sentinels, for
    logs and messages."""
    if settings.redis_sentinels:
        sentinels = ",".join(
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            for host, port in settings.redis_sentinel_addresses
        )
        scheme = "TLS, " if settings.redis_sentinel_tls else ""
        return f"master {settings.redis_sentinel_master!r} ({scheme}Sentinels {sentinels})"
    return redact_url(settings.redis_url)


def explain_error(exc: BaseException, settings: Settings) -> RedisConnectError:
    """Turn a redis-py / OS / TLS error into one sentence naming the cause."""
    target = describe_target(settings)
    chain = _chain(exc)
    text = " | ".join(str(e) for e in chain)
    codes = {getattr(e, "status_code", None) for e in chain}  # redis-py keeps NOAUTH etc. here
    user = settings.redis_username or urlsplit(settings.redis_url or "").username or "default"

    def err(cause: str, what: str) -> RedisConnectError:
        return RedisConnectError(cause, f"Redis at {target}: {what}")

    if any(isinstance(e, MasterNotFoundError) for e in chain):
        return _explain_no_master(text, settings, err)
    if any(isinstance(e, ssl.SSLCertVerificationError) for e in chain) or (
        "CERTIFICATE_VERIFY_FAILED" in text
    ):
        reason = next(
            (e.verify_message for e in chain if isinstance(e, ssl.SSLCertVerificationError)),
            "certificate verify failed",
        )
        return err(
            "tls_verify",
            f"TLS certificate verification failed ({reason}). Set REDIS_TLS_CA_FILE to the CA "
            "that signed the server's certificate, and connect with a host name the "
            "certificate lists.",
        )
    if isinstance(exc, NoPermissionError) or "NOPERM" in codes:
        return err(
            "noperm",
            f"the ACL user {user!r} lacks a permission Taskloom needs ({_first_line(exc)}). "
            "Grant it with ACL SETUSER (docs/REDIS.md lists what Taskloom needs).",
        )
    if "NOAUTH" in codes:
        return err(
            "noauth",
            "the server requires a password (NOAUTH) and none was sent. Set REDIS_PASSWORD "
            "or put the password in REDIS_URL.",
        )
    if "without any password configured" in text or "no password is set" in text:
        return err(
            "auth",
            "a password was sent but the server has none configured for this user. Remove "
            "REDIS_PASSWORD (and any password in REDIS_URL), or configure one on the server.",
        )
    if isinstance(exc, AuthenticationError) or "WRONGPASS" in codes:
        return err(
            "auth",
            f"authentication failed for user {user!r}: wrong password, or the ACL user is "
            "unknown or disabled. Check REDIS_PASSWORD / REDIS_USERNAME.",
        )
    if "CERTIFICATE_REQUIRED" in text:
        return err(
            "tls_client_cert",
            "the server requires a client certificate (mutual TLS). Set REDIS_TLS_CERT_FILE "
            "and REDIS_TLS_KEY_FILE to a certificate its CA trusts.",
        )
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:
        return err(
            "tls_handshake",
            "the server did not answer in TLS: this port is plaintext. Use redis:// for it, "
            "or the server's TLS port with rediss://.",
        )
    if any(isinstance(e, ssl.SSLError) for e in chain) or "SSL" in text:
        return err(
            "tls_handshake",
            f"the TLS handshake failed ({_first_line(exc)}). Is this port TLS? A plaintext "
            "server needs redis://; a server requiring client certificates needs "
            "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE.",
        )
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "refused" in text.lower():
        return err("refused", "connection refused. Is Redis running and listening there?")
    if any(isinstance(e, OSError) and e.errno in _UNREACHABLE for e in chain) or (
        "Name or service not known" in text
    ):
        return err("unreachable", f"host unreachable or unknown ({_first_line(exc)}).")
    if any(isinstance(e, (TimeoutError, RedisTimeoutError)) for e in chain) or (
        "timed out" in text.lower() or "Timeout" in text
    ):
        return err(
            "timeout",
            f"no answer within {settings.redis_connect_timeout_seconds:g} s: a firewall, a "
            "wrong host or port, or a TLS mismatch (rediss:// to a plaintext port, or redis:// "
            "to a TLS port).",
        )
    if "closed by server" in text or "reset by peer" in text or "Connection lost" in text:
        return err(
            "closed",
            "the server closed the connection. A TLS port spoken to with redis:// does this "
            "(use rediss://), as does a server that requires client certificates "
            "(REDIS_TLS_CERT_FILE / REDIS_TLS_KEY_FILE) or one at its client limit.",
        )
    return err("error", _first_line(exc))


def _explain_no_master(
    text: str, settings: Settings, err: Callable[[str, str], RedisConnectError]
) -> RedisConnectError:
    """The Sentinels named no master: none answered, one refused our credentials, or those
    that answered know no healthy master by that name. (redis-py's message lists each failed
    Sentinel as `<redis.asyncio.client.Redis(…)> - <error>`; one that answered leaves none.)"""
    failed = text.count("client.Redis(")
    if "AuthenticationError" in text or "NOAUTH" in text or "WRONGPASS" in text:
        return err(
            "sentinel_auth",
            "a Sentinel refused the credentials: Sentinels that require a password (their "
            "`requirepass`, or an ACL user) need REDIS_SENTINEL_PASSWORD (and "
            "REDIS_SENTINEL_USERNAME); REDIS_PASSWORD is the data nodes'.",
        )
    if failed >= len(settings.redis_sentinel_addresses):
        return err(
            "sentinels_unreachable",
            "no Sentinel answered (connection refused or timed out on each). Check "
            "REDIS_SENTINELS (host:port of each Sentinel, usually port 26379) and "
            "REDIS_SENTINEL_TLS.",
        )
    return err(
        "no_master",
        f"the Sentinels know no healthy master named {settings.redis_sentinel_master!r}. "
        "Check REDIS_SENTINEL_MASTER against `SENTINEL MASTERS` on a Sentinel; during a "
        "failover this lasts until a replica is promoted.",
    )


_UNREACHABLE = {errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENOENT, errno.EADDRNOTAVAIL}


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


async def connect_redis(settings: Settings, *, purpose: str = "app") -> Redis:
    """A client that has answered PING, or RedisConnectError within a few seconds. Logs one
    line like `redis connected env=production tls=True key_prefix=production:` (no secret)."""
    client = create_redis(settings, purpose=purpose)
    try:
        # Each retry may wait a full connect timeout; the whole attempt gets one and a half.
        await asyncio.wait_for(_first_ping(client), settings.redis_connect_timeout_seconds * 1.5)
    except (RedisError, OSError, TimeoutError) as exc:
        await client.aclose()
        raise explain_error(exc, settings) from exc
    except BaseException:
        await client.aclose()
        raise
    log.info(
        "redis connected",
        mode="sentinel" if settings.redis_sentinels else "server",
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
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.discover_master(pool.service_name)
    await client.ping()


# --- a small JSON cache ------------------------------------------------------------------------


@dataclass(frozen=True)
class Cache:
    """JSON values with a TTL under `<prefix>cache:<namespace>:<scope>:<sha256 of key>`.

    `scope` names whose data an entry holds (`org:<uuid>` or `user:<uuid>`), so one call purges
    an organization's or a person's cached data (GDPR erasure, revoked connections). Keys are
    hashed: cached arguments may be personal data and key names show up in monitoring tools.
    """

    redis: Redis
    keys: Keys
    namespace: str

    def _key(self, scope: str, key: str) -> str:
        return self.keys("cache", self.namespace, scope, hashlib.sha256(key.encode()).hexdigest())

    async def get(self, scope: str, key: str) -> Any | None:
        raw = await self.redis.get(self._key(scope, key))
        return None if raw is None else json.loads(raw)

    async def set(self, scope: str, key: str, value: Any, *, ttl_seconds: int) -> None:
        await self.redis.set(self._key(scope, key), json.dumps(value), ex=ttl_seconds)

    async def purge(self, scope: str) -> int:
        """Delete every entry of `scope` in this namespace; returns how many were removed."""
        return await purge_matching(self.redis, self.keys.match("cache", self.namespace, scope))


async def purge_matching(redis: Redis, pattern: str) -> int:
    """UNLINK every key matching a `Keys.match` pattern (SCAN, so the server never blocks)."""
    removed = 0
    batch: list[str] = []
    async for key in redis.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            removed += await redis.unlink(*batch)
            batch.clear()
    if batch:
        removed += await redis.unlink(*batch)
    return removed


def redis_info_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """The few INFO fields worth showing an operator (version, memory, eviction policy)."""
    return {
        "version": info.get("redis_version"),
        "used_memory_human": info.get("used_memory_human"),
        "maxmemory_policy": info.get("maxmemory_policy"),
    }
