"""The HTTP client a provider talks through: the outbound address guard (an organization's base
URL must not reach the worker's own network unless OUTBOUND_ALLOWED_HOSTS says so), one timeout,
no proxies from the environment, and the request id of the action that caused the call.

With a pool and a connection, the client is new for each call (its own headers and cookie jar)
but its transport is the connection's pooled one (outbound_pool.py), keyed by organization,
connection id and a fingerprint of the base URL and credentials: a changed credential or URL
never reuses the old connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2

from taskloom import __version__
from taskloom.config import Settings
from taskloom.observability.request_id import current_request_id
from taskloom.outbound_pool import OutboundPool, PoolKey, fingerprint
from taskloom.tools.base import Connection
from taskloom.tools.registry import HTTPX2_PROVIDERS

# Connection tests and tool listings from the API are rare admin actions: one-off clients.
_UNPOOLED = OutboundPool(max_clients=0)


def _headers() -> dict[str, str]:
    headers = {"User-Agent": f"Taskloom/{__version__}"}
    if request_id := current_request_id():
        headers["X-Request-ID"] = request_id
    return headers


def connection_key(settings: Settings, connection: Connection, *, kind: str = "tool") -> PoolKey:
    """The pool key of a connection's client (see the module docstring)."""
    return PoolKey(
        org=str(connection.org_id),
        kind=kind,
        owner=str(connection.id),
        fingerprint=fingerprint(connection.provider, connection.base_url, connection.credentials),
        flavor="httpx2" if connection.provider in HTTPX2_PROVIDERS else "httpx",
        policy=settings.outbound_allowed_hosts,
    )


@asynccontextmanager
async def provider_client(
    settings: Settings,
    connection: Connection,
    *,
    pool: OutboundPool | None = None,
    timeout_seconds: float | None = None,
) -> AsyncIterator[Any]:
    """An httpx (or, for SDK-based providers, httpx2) AsyncClient for one call of
    `connection`, on its pooled transport when `pool` is given."""
    seconds = timeout_seconds if timeout_seconds is not None else settings.tool_timeout_seconds
    key = connection_key(settings, connection)
    library: Any = httpx2 if key.flavor == "httpx2" else httpx
    async with (
        (pool if pool is not None else _UNPOOLED).transport(key) as transport,
        library.AsyncClient(
            transport=transport,
            timeout=seconds,
            headers=_headers(),
            follow_redirects=False,
            trust_env=False,
        ) as client,
    ):
        yield client
