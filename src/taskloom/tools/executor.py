"""Calling a tool through an organization's connection, the same way for every provider:

1. find the connection (by name or id, in the caller's organization only) and decrypt it;
2. validate the arguments (the tool's `Args` model, or an MCP tool's JSON Schema in the provider);
3. read-only tools: answer from the Redis cache when the same call was made recently;
4. ask the connection's own circuit breaker (`tool:<connection id>`; one organization's failing
   connection never blocks another's), then call the provider with a guarded HTTP client;
5. count the call once (`mcp_tool_calls_total`, `mcp_tool_call_duration_seconds`), store a
   read's result in the cache, or invalidate the connection's cache after a write.

Cache keys hold a per-connection generation number: a write increments it, so every older
entry stops being read at once (no SCAN), and a read that raced the write stores its result
under the old generation, where nobody looks.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from taskloom.breakers import BREAKERS, Breaker, CircuitOpen
from taskloom.config import Settings
from taskloom.crypto import CredentialKeyError
from taskloom.db.tenancy import tenant_transaction
from taskloom.net import TargetNotAllowed
from taskloom.observability.metrics import OTHER, TOOL_CACHE, TOOL_CALLS, TOOL_DURATION, TOOL_NAMES
from taskloom.redis import Cache
from taskloom.runtime import Runtime
from taskloom.tools import service
from taskloom.tools.base import Connection, Tool, ToolError
from taskloom.tools.client import provider_client
from taskloom.tools.models import ToolConnection
from taskloom.tools.registry import AI_PROVIDERS, PROVIDERS

log = structlog.get_logger("taskloom.tools")
T = TypeVar("T")

# Providers whose tool list comes from the remote server (a network call, so behind the breaker).
DYNAMIC_TOOL_PROVIDERS = frozenset({"mcp"})

# Failures that say the remote side (or this connection's credentials) is broken, and so count
# towards opening the breaker; a 404 or a validation error is the caller's problem.
_BREAKER_STATUSES = frozenset({401, 403})


def breaker_for(settings: Settings, connection_id: uuid.UUID) -> Breaker:
    return BREAKERS.get(
        f"tool:{connection_id}",
        failure_threshold=settings.breaker_failure_threshold,
        reset_seconds=settings.breaker_reset_seconds,
    )


async def load_connection(
    services: Runtime, *, org_id: uuid.UUID, ref: str, provider: str | None = None
) -> Connection:
    """The organization's enabled connection `ref` (name or id), decrypted."""
    async with tenant_transaction(services.database, org_id=org_id, user_id=None) as db:
        row = await service.find_connection(db=db, org_id=org_id, ref=ref, provider=provider)
    return usable_connection(services, row, ref=ref, provider=provider)


def usable_connection(
    services: Runtime, row: ToolConnection | None, *, ref: str, provider: str | None = None
) -> Connection:
    """`row` (the connection `ref`, or None: not found) decrypted, if it is there and enabled."""
    if row is None:
        kind = f"{provider} connection" if provider else "connection"
        raise ToolError(f"no {kind} named {ref!r} in this organization", code="no_connection")
    if not row.enabled:
        raise ToolError(f"connection {row.name!r} is disabled", code="connection_disabled")
    try:
        return service.decrypted(row, services.cipher)
    except CredentialKeyError as error:
        raise ToolError(str(error), code="credentials_undecryptable") from None


def _canonical(args: dict[str, Any]) -> str:
    return json.dumps(args, sort_keys=True, separators=(",", ":"), default=str)


def _find_tool(connection: Connection, tools: list[Tool], name: str) -> Tool:
    for tool in tools:
        if tool.name == name:
            return tool
    known = ", ".join(sorted(t.name for t in tools)) or "none"
    raise ToolError(
        f"{connection.provider} has no tool {name!r} (tools: {known})", code="unknown_tool"
    )


def _validated_args(tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
    if tool.Args is None:  # MCP: the provider checks the server's JSON Schema
        return args
    try:
        parsed = tool.Args.model_validate(args)
    except ValidationError as invalid:
        first = invalid.errors(include_input=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = first.get("msg", "invalid")
        raise ToolError(
            f"{tool.name}: {where}: {message}" if where else f"{tool.name}: {message}",
            code="invalid_args",
        ) from None
    validated: dict[str, Any] = parsed.model_dump(mode="json", exclude_unset=True)
    return validated


class _Cache:
    def __init__(self, services: Runtime, connection: Connection) -> None:
        self.redis, self.connection = services.redis, connection
        self.cache = Cache(services.redis, services.keys, "tools")
        self.scope = f"org:{connection.org_id}"
        self.generation_key = services.keys("toolgen", str(connection.id))

    async def get(self, tool: str, args: dict[str, Any]) -> tuple[str, Any | None]:
        generation = await self.redis.get(self.generation_key)
        key = f"{self.connection.id}:{int(generation or 0)}:{tool}:{_canonical(args)}"
        return key, await self.cache.get(self.scope, key)

    async def put(self, key: str, value: Any, ttl: int) -> None:
        await self.cache.set(self.scope, key, value, ttl_seconds=ttl)

    async def invalidate(self) -> None:
        await self.redis.incr(self.generation_key)


async def connection_tools(
    services: Runtime, *, org_id: uuid.UUID, connection_ref: str
) -> tuple[Connection, list[Tool]]:
    """The connection and its tools (an MCP server's listing goes behind the connection's
    breaker and timeout): what an `agent` step may offer its model. Raises ToolError."""
    connection = _tool_connection(
        await load_connection(services, org_id=org_id, ref=connection_ref), connection_ref
    )
    provider = PROVIDERS[connection.provider]
    breaker = breaker_for(services.settings, connection.id)
    async with provider_client(services.settings, connection, pool=services.outbound) as http:
        if connection.provider in DYNAMIC_TOOL_PROVIDERS:
            return connection, await _guarded(
                services, connection, breaker, provider.tools(connection, http)
            )
        return connection, await provider.tools(connection, http)


def _tool_connection(connection: Connection, ref: str) -> Connection:
    if connection.provider in AI_PROVIDERS:
        raise ToolError(
            f"{ref!r} is an {connection.provider} connection, used by `ai` steps",
            code="unknown_tool",
        )
    return connection


async def call_tool(
    services: Runtime,
    *,
    org_id: uuid.UUID,
    connection_ref: str,
    tool_name: str,
    args: dict[str, Any],
    use_cache: bool = True,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Call one tool; returns {"result", "cached", "tool"}. Raises ToolError.
    `idempotency_key` goes out as an `Idempotency-Key` header on each request of the call
    (the MCP session's too), for servers that honour it."""
    settings = services.settings
    connection = _tool_connection(
        await load_connection(services, org_id=org_id, ref=connection_ref), connection_ref
    )
    provider = PROVIDERS[connection.provider]
    breaker = breaker_for(settings, connection.id)
    async with provider_client(settings, connection, pool=services.outbound) as http:
        if idempotency_key is not None:
            http.headers["Idempotency-Key"] = idempotency_key
        if connection.provider in DYNAMIC_TOOL_PROVIDERS:  # listing asks the server
            tools = await _guarded(services, connection, breaker, provider.tools(connection, http))
        else:
            tools = await provider.tools(connection, http)
        tool = _find_tool(connection, tools, tool_name)
        checked = _validated_args(tool, args)
        cache = _Cache(services, connection)
        label = _tool_label(connection.provider, tool.name)
        cache_key: str | None = None
        if tool.read_only and use_cache and settings.tool_cache_ttl_seconds > 0:
            try:
                cache_key, hit = await cache.get(tool.name, checked)
            except RedisError as error:  # a cache outage degrades to no cache
                log.warning("tool_cache_unavailable", error=type(error).__name__)
            else:
                TOOL_CACHE.labels(connection.provider, label, "hit" if hit else "miss").inc()
                if hit is not None:
                    return {"result": hit["v"], "cached": True, "tool": tool.name}
        started, success = time.perf_counter(), False
        try:
            call = provider.call(connection, http, tool.name, checked)
            result = await _guarded(services, connection, breaker, call)
            success = True
        finally:
            TOOL_CALLS.labels(connection.provider, label, str(success).lower()).inc()
            TOOL_DURATION.labels(connection.provider, label).observe(time.perf_counter() - started)
    try:
        if cache_key is not None:
            await cache.put(cache_key, {"v": result}, settings.tool_cache_ttl_seconds)
        elif not tool.read_only:
            await cache.invalidate()
    except RedisError as error:
        log.warning("tool_cache_unavailable", error=type(error).__name__)
    return {"result": result, "cached": False, "tool": tool.name}


async def _guarded(
    services: Runtime, connection: Connection, breaker: Breaker, call: Awaitable[T]
) -> T:
    """Await one exchange with the provider behind the connection's breaker and timeout."""
    try:
        await breaker.before_call()
    except CircuitOpen as error:
        if inspect.iscoroutine(call):
            call.close()  # never awaited: say so, rather than warn
        raise ToolError(
            f"the circuit of this {connection.provider} connection is open after repeated "
            f"failures; the next trial call is in {error.retry_in:.0f} s",
            code="circuit_open",
            retryable=True,
        ) from None
    timeout = services.settings.tool_timeout_seconds
    try:
        try:
            async with asyncio.timeout(timeout):
                result = await call
        except TimeoutError:
            raise ToolError(
                f"{connection.provider} did not answer within {timeout:g} s",
                code="tool_timeout",
                retryable=True,
            ) from None
        except TargetNotAllowed as refused:  # the connection's base URL is not public
            raise ToolError(str(refused), code="target_not_allowed") from None
    except ToolError as error:
        if error.retryable or error.status in _BREAKER_STATUSES:
            await breaker.record_failure()
        else:
            await breaker.record_success()  # the remote answered; the request was wrong
        raise
    except Exception:
        await breaker.record_failure()
        raise
    except BaseException:  # cancelled (shutdown): no verdict on the remote side
        await breaker.abandon_trial()
        raise
    await breaker.record_success()
    return result


def _tool_label(provider: str, tool: str) -> str:
    """The `tool` label: MCP servers name their own tools, so past the first MAX_NAMED_TOOLS
    (provider, tool) pairs of this process they count as `other`."""
    return tool if TOOL_NAMES(f"{provider}\x00{tool}") != OTHER else OTHER
