"""Outbound connection reuse: one bounded pool of HTTP transports per process.

Before this, every tool call, MCP call, AI call, webhook delivery and `http` step opened a new
HTTP client and so paid a TCP and TLS handshake (only the TLS context was shared). Now a call
borrows a pooled transport (an httpx or httpx2 AsyncHTTPTransport whose connection pool keeps
connections alive) and wraps it in a client of its own:

- Keys. An entry is keyed by organization, kind (tool, ai, webhook, http), owner (connection
  id, endpoint id, or an `http` step's origin), a fingerprint of what must never be reused once
  it changes (base URL and credentials), the HTTP library and the address policy. Two
  organizations never share an entry, whatever their URLs and credentials; a changed credential
  or URL misses the old entry, which idles out. `discard(owner)` closes an owner's entries at
  once (connection updated or deleted in this process); other processes stop using them because
  their key no longer matches, and close them after OUTBOUND_POOL_IDLE_SECONDS.
- Nothing of one call reaches another. The pooled part is the transport only: each call builds
  its own client around it, so default headers (request id), auth headers and the cookie jar
  are per call, as before.
- The address guard holds for every socket. A guarded transport's connection pool opens each
  socket through net.GuardedBackend: resolved once, every address checked, connected to a
  checked address. A kept-alive connection was checked when it was opened and still goes to
  that address; a new one is checked when it is opened, so a host that now resolves to a
  forbidden address is refused on the next new socket.
- A step's secrets hold for every request. Each request a borrowed (or own) transport is handed
  is first checked against the calling task's host restriction (net.restricted_to: the hosts
  every organization secret the step uses allows), before any connection is taken or opened.
- Bounds. At most OUTBOUND_POOL_MAX_CLIENTS entries (least recently used evicted and closed;
  one in use is closed when its last call returns), OUTBOUND_POOL_MAX_CONNECTIONS sockets per
  entry, and entries idle for OUTBOUND_POOL_IDLE_SECONDS closed by a sweeper task. With
  OUTBOUND_POOL_MAX_CLIENTS=0 every call opens and closes its own transport (the old behaviour).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import httpx2
import structlog

from taskloom.net import (
    AddressPolicy,
    check_restriction,
    guarded_transport,
    guarded_transport2,
    plain_transport2,
)

log = structlog.get_logger("taskloom.outbound_pool")

Flavor = Literal["httpx", "httpx2"]

# Fingerprints are keyed with a per-process secret: the pool's keys never hold a plain hash of
# a credential that could be checked offline against guesses.
_FINGERPRINT_KEY = secrets.token_bytes(32)


def fingerprint(*parts: Any) -> str:
    """A keyed digest of `parts` (base URL, credentials, ...): equal parts, equal digest."""
    data = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hmac.new(_FINGERPRINT_KEY, data, hashlib.blake2b).hexdigest()[:32]


@dataclass(frozen=True)
class PoolKey:
    org: str  # the organization's id; never shared between organizations
    kind: str  # "tool", "ai", "webhook", "http"
    owner: str  # connection id, webhook endpoint id, or an http step's scheme://host:port
    fingerprint: str  # of what must not be reused once it changes (base URL, credentials)
    flavor: Flavor
    guarded: bool = True  # False only for endpoints the operator configured (instance AI keys)
    policy: str = ""  # OUTBOUND_ALLOWED_HOSTS the transport enforces


@dataclass
class _Entry:
    transport: Any  # httpx.AsyncHTTPTransport | httpx2.AsyncHTTPTransport
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False  # evicted or discarded while in use: closed when the last call ends


class _Borrowed(httpx.AsyncBaseTransport):
    """A pooled httpx transport lent to one client: closing the client leaves it open."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        check_restriction(request.url.host)  # a step's secrets' allowed hosts (net.py)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass  # the pool's to close


class _Borrowed2(httpx2.AsyncBaseTransport):
    """_Borrowed for httpx2 (the SDKs' client)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        check_restriction(request.url.host)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        pass


def _open(key: PoolKey, *, max_connections: int, keepalive_seconds: float) -> Any:
    """A new transport for `key`: guarded unless the key says the endpoint is the operator's."""
    if not key.guarded:
        if key.flavor == "httpx2":
            return plain_transport2(
                max_connections=max_connections, keepalive_expiry=keepalive_seconds
            )
        raise ValueError("only operator-configured httpx2 endpoints may go unguarded")
    policy = AddressPolicy.from_setting(key.policy)
    if key.flavor == "httpx2":
        return guarded_transport2(
            policy, max_connections=max_connections, keepalive_expiry=keepalive_seconds
        )
    return guarded_transport(
        policy, max_connections=max_connections, keepalive_expiry=keepalive_seconds
    )


class OutboundPool:
    """The process's reusable outbound transports (see the module docstring)."""

    def __init__(
        self, *, max_clients: int, max_connections: int = 10, idle_seconds: float = 60.0
    ) -> None:
        self.max_clients = max_clients
        self.max_connections = max_connections
        self.idle_seconds = idle_seconds
        self._entries: OrderedDict[PoolKey, _Entry] = OrderedDict()
        self._retired_entries: list[_Entry] = []  # evicted or discarded, not closed yet
        self._closing: set[asyncio.Task[None]] = set()  # evicted entries being closed
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        self.opened = 0  # transports opened so far (for tests and the benchmark)

    @classmethod
    def from_settings(cls, settings: Any) -> OutboundPool:
        return cls(
            max_clients=settings.outbound_pool_max_clients,
            max_connections=settings.outbound_pool_max_connections,
            idle_seconds=settings.outbound_pool_idle_seconds,
        )

    @property
    def enabled(self) -> bool:
        return self.max_clients > 0 and not self._closed

    @property
    def size(self) -> int:
        """Pooled clients now (not `__len__`: an empty pool must not be falsy)."""
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def transport(self, key: PoolKey) -> AsyncIterator[Any]:
        """A transport for one call's client (closing that client leaves it open). Unpooled
        (pool off or closed): a transport of the call's own, closed when the call ends."""
        if not self.enabled:
            own = _open(key, max_connections=self.max_connections, keepalive_seconds=5.0)
            self.opened += 1
            try:
                yield _Borrowed2(own) if key.flavor == "httpx2" else _Borrowed(own)
            finally:
                await own.aclose()
            return
        entry = self._acquire(key)
        try:
            yield (
                _Borrowed2(entry.transport)
                if key.flavor == "httpx2"
                else _Borrowed(entry.transport)
            )
        finally:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if entry.retired and entry.in_use == 0:
                await self._close_entry(entry)

    def _acquire(self, key: PoolKey) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            entry = _Entry(
                _open(
                    key,
                    max_connections=self.max_connections,
                    keepalive_seconds=self.idle_seconds,
                )
            )
            self.opened += 1
            self._entries[key] = entry
            while len(self._entries) > self.max_clients:
                _, evicted = self._entries.popitem(last=False)
                self._retire(evicted)
            self._ensure_sweeper()
        else:
            self._entries.move_to_end(key)
        entry.in_use += 1
        return entry

    def _retire(self, entry: _Entry) -> None:
        """Close `entry` now if idle, else when its last call returns."""
        entry.retired = True
        self._retired_entries.append(entry)
        if entry.in_use == 0:
            task = asyncio.get_running_loop().create_task(self._close_entry(entry))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_entry(self, entry: _Entry) -> None:
        with contextlib.suppress(ValueError):
            self._retired_entries.remove(entry)
        try:
            await entry.transport.aclose()
        except Exception as error:  # a broken socket must not stop the others closing
            log.warning("outbound_pool_close_failed", error=type(error).__name__)

    async def discard(self, *, owner: str) -> int:
        """Close every entry of `owner` (a connection or endpoint changed or was deleted);
        one in use closes when its call returns. Returns how many were dropped."""
        # Taken out all at once: closing awaits, and the dict may change meanwhile.
        dropped = [self._entries.pop(key) for key in list(self._entries) if key.owner == owner]
        for entry in dropped:
            entry.retired = True
            if entry.in_use == 0:
                await self._close_entry(entry)
            else:
                self._retired_entries.append(entry)
        return len(dropped)

    async def sweep(self) -> int:
        """Close entries idle for longer than idle_seconds; returns how many."""
        cutoff = time.monotonic() - self.idle_seconds
        # Taken out all at once, before any await: a call may borrow an entry meanwhile.
        idle = [
            self._entries.pop(key)
            for key, entry in list(self._entries.items())
            if entry.in_use == 0 and entry.last_used <= cutoff
        ]
        for entry in idle:
            await self._close_entry(entry)
        return len(idle)

    def _ensure_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        interval = min(max(self.idle_seconds / 2, 0.05), 15.0)
        while self._entries:
            await asyncio.sleep(interval)
            await self.sweep()

    async def aclose(self) -> None:
        """Close every transport (process shutdown); later calls go unpooled."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._sweeper
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        entries = [*self._entries.values(), *self._retired_entries]
        self._entries.clear()
        self._retired_entries.clear()
        for entry in entries:
            await self._close_entry(entry)
