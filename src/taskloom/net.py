"""The outbound-address guard: may an `http` step reach this host? Without it any tenant could
make the worker fetch cloud metadata (169.254.169.254), Redis on localhost or the office LAN.

The check runs at connect time, inside httpcore's network backend: the host is resolved once,
every address is checked, and the socket is opened to a checked address. A second DNS lookup
(which a rebinding DNS server could answer with 127.0.0.1) never happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import ssl
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import httpcore
import httpcore2
import httpx
import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# NAT64 (RFC 6052) embeds an IPv4 address in the last 32 bits; a NAT64 gateway would reach it.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class TargetNotAllowed(ValueError):
    """The host is, or resolves to, an address an `http` step may not reach."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(
            f"refusing to connect to {host}: {address} is {_article(reason)} {reason} address, "
            "not a public one "
            "(operators may allow it with OUTBOUND_ALLOWED_HOSTS)"
        )
        self.host = host
        self.address = address
        self.reason = reason


class SecretHostNotAllowed(ValueError):
    """A request that may carry organization secrets is addressed to a host that is not on
    every such secret's `allowed_hosts`. Nothing was sent."""

    def __init__(self, host: str, names: tuple[str, ...]) -> None:
        listed = ", ".join(names)
        super().__init__(
            f"refusing to send to {host}: the step uses secrets ({listed}) whose allowed_hosts "
            "do not all include it"
        )
        self.host = host
        self.names = names


@dataclass
class HostRestriction:
    """Where the requests of one step may go: the hosts allowed for every secret it uses.
    `refused` remembers a refusal, whatever a client library makes of the exception."""

    hosts: frozenset[str]
    names: tuple[str, ...]
    refused: SecretHostNotAllowed | None = None

    def check(self, host: str) -> None:
        if _normalise_host(host) not in self.hosts:
            self.refused = SecretHostNotAllowed(_normalise_host(host), self.names)
            raise self.refused


_RESTRICTION: ContextVar[HostRestriction | None] = ContextVar("outbound_restriction", default=None)


@contextlib.contextmanager
def restricted_to(hosts: Iterable[str], names: Iterable[str]) -> Iterator[HostRestriction]:
    """Within the block (the task of one step), every outbound request through the process's
    transports (outbound_pool.py) must be addressed to one of `hosts`; others fail with
    SecretHostNotAllowed before anything is sent, redirects included."""
    restriction = HostRestriction(
        frozenset(_normalise_host(h) for h in hosts), tuple(sorted(names))
    )
    token = _RESTRICTION.set(restriction)
    try:
        yield restriction
    finally:
        _RESTRICTION.reset(token)


def check_restriction(host: str) -> None:
    """Raise SecretHostNotAllowed if the current task's requests may not go to `host`."""
    restriction = _RESTRICTION.get()
    if restriction is not None:
        restriction.check(host)


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not publicly routable ("loopback", "private", ...), or None if it is.
    IPv6 forms that embed an IPv4 address (mapped, 6to4, NAT64) are judged by that address too,
    so ::ffff:127.0.0.1 counts as loopback."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return refusal_reason(address.ipv4_mapped)
        embedded = address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (reason := refusal_reason(embedded)) is not None:
            return reason
        if address.is_site_local:
            return "private"
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),  # is_global is True for most multicast
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("reserved", not address.is_global),  # e.g. 100.64.0.0/10, shared address space
    )
    return next((reason for reason, hit in checks if hit), None)


def _normalise_host(host: str) -> str:
    return host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()


@dataclass(frozen=True)
class AddressPolicy:
    """Which non-public targets are allowed anyway: exact host names, and networks (an exact
    IP is a /32 or /128). Everything publicly routable is always allowed."""

    hostnames: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_setting(cls, value: str) -> AddressPolicy:
        """Parse OUTBOUND_ALLOWED_HOSTS: comma-separated host names, IP addresses, CIDRs."""
        hostnames: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in value.split(","):
            entry = _normalise_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hostnames.add(entry)
        return cls(frozenset(hostnames), tuple(networks))

    def check(self, host: str, addresses: Iterable[IPAddress]) -> None:
        """Raise TargetNotAllowed unless every address is public or allow-listed (by the host
        name, or by a network containing the address exactly as resolved)."""
        if _normalise_host(host) in self.hostnames:
            return
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None and not any(address in net for net in self.networks):
                raise TargetNotAllowed(host, str(address), reason)

    async def resolve_allowed(self, host: str, port: int) -> list[str]:
        """The addresses of `host` to connect to, in resolver order, after checking them all.
        Resolution runs in the loop's executor; DNS failures raise OSError (socket.gaierror)."""
        name = _normalise_host(host)
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(name)]
        except ValueError:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            addresses = []
            for *_, sockaddr in infos:
                address = ipaddress.ip_address(str(sockaddr[0]))
                if address not in addresses:
                    addresses.append(address)
        if not addresses:
            raise socket.gaierror(f"{name} has no addresses")
        self.check(host, addresses)
        return [str(address) for address in addresses]


async def _connect_checked(
    core: Any,
    policy: AddressPolicy,
    inner: Any,
    host: str,
    port: int,
    timeout: float | None,  # noqa: ASYNC109 (httpcore's signature)
    local_address: str | None,
    socket_options: Any,
) -> Any:
    """Resolve and check `host`, then connect to a checked address with `inner` (an httpcore or
    httpcore2 backend; `core` is that module, for its exception types)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            addresses = await policy.resolve_allowed(host, port)
    except TimeoutError:
        raise core.ConnectTimeout(f"resolving {host} timed out") from None
    except OSError as exc:
        raise core.ConnectError(f"could not resolve {host}: {exc}") from exc
    failure: Exception = core.ConnectError(f"could not connect to {host}")
    for address in addresses:
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise core.ConnectTimeout(f"connecting to {host} timed out")
        try:
            return await inner.connect_tcp(
                address,
                port,
                timeout=remaining,
                local_address=local_address,
                socket_options=socket_options,
            )
        except (core.ConnectError, core.ConnectTimeout) as exc:
            failure = exc
    raise failure


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves and checks the host, then connects to the
    checked IP. TLS still verifies the URL's host name: httpcore passes it to start_tls."""

    def __init__(
        self, policy: AddressPolicy, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.policy = policy
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream: httpcore.AsyncNetworkStream = await _connect_checked(
            httpcore, self.policy, self.inner, host, port, timeout, local_address, socket_options
        )
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's signature)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not reachable from http steps")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedBackend2(httpcore2.AsyncNetworkBackend):
    """GuardedBackend for httpcore2, the transport of the `anthropic`, `openai` and `mcp`
    SDKs (which use the httpx2 fork of httpx)."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream: httpcore2.AsyncNetworkStream = await _connect_checked(
            httpcore2, self.policy, self.inner, host, port, timeout, local_address, socket_options
        )
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise httpcore2.ConnectError("unix sockets are not reachable from tenant URLs")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's TLS client context for httpx: certifi's CAs, hostname checks, no
    SSLKEYLOGFILE or SSL_CERT_* from the environment. Building one reads and parses the whole CA
    bundle (tens of ms of CPU), which every outgoing call used to pay; an SSLContext is made to be
    shared by many connections."""
    return httpx.create_ssl_context(trust_env=False)


@functools.cache
def tls_context2() -> ssl.SSLContext:
    """tls_context for httpx2 (the SDKs' client)."""
    return httpx2.create_ssl_context(trust_env=False)


def plain_transport2(
    *, max_connections: int = 10, keepalive_expiry: float = 5.0
) -> httpx2.AsyncHTTPTransport:
    """An httpx2 transport without the address guard (instance-level endpoints the operator
    configured), on the shared TLS context and with no proxy from the environment."""
    limits = httpx2.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
    )
    return httpx2.AsyncHTTPTransport(verify=tls_context2(), trust_env=False, limits=limits)


def guarded_transport(
    policy: AddressPolicy,
    *,
    inner: httpcore.AsyncNetworkBackend | None = None,
    max_connections: int = 10,
    keepalive_expiry: float = 5.0,
) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose every connection goes through GuardedBackend, with no proxy.

    httpx 0.28 offers no public way to give AsyncHTTPTransport a network backend, so this builds
    a normal transport and replaces its private `_pool` with a public httpcore
    AsyncConnectionPool that uses our backend. It fails closed (RuntimeError) if httpx stops
    having that attribute; tests/executions/test_http_step.py checks it still works.
    `keepalive_expiry`: how long an idle connection is kept for reuse (outbound_pool.py)."""
    transport = httpx.AsyncHTTPTransport(verify=tls_context(), trust_env=False)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("httpx.AsyncHTTPTransport changed: cannot install the address guard")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=tls_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=GuardedBackend(policy, inner),
    )
    return transport


def guarded_transport2(
    policy: AddressPolicy, *, max_connections: int = 10, keepalive_expiry: float = 5.0
) -> httpx2.AsyncHTTPTransport:
    """guarded_transport for httpx2 (the SDKs' client); the same private-attribute swap, the same
    fail-closed check (tests/tools/test_outbound_guard.py checks it still works)."""
    transport = plain_transport2(max_connections=1)  # its own pool is replaced below
    if not isinstance(getattr(transport, "_pool", None), httpcore2.AsyncConnectionPool):
        raise RuntimeError("httpx2.AsyncHTTPTransport changed: cannot install the address guard")
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=tls_context2(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=keepalive_expiry,
        network_backend=GuardedBackend2(policy),
    )
    return transport
