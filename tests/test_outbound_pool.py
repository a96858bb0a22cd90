"""The outbound pool (taskloom/outbound_pool.py) against a real HTTP/1.1 server on 127.0.0.1 that
counts the TCP connections it accepts and closes: calls through one key share a kept-alive
connection, different organizations never do, nothing of one call (headers, cookies) reaches
the next, idle and evicted clients are closed, shutdown closes everything, and a pooled client
still meets the address guard on every new socket."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from taskloom.net import TargetNotAllowed
from taskloom.outbound_pool import OutboundPool, PoolKey, fingerprint


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    opened = 0
    closed = 0
    lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.opened += 1

    def finish(self) -> None:
        super().finish()
        with self.server.lock:
            self.server.closed += 1

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        if url.path == "/slow":
            time.sleep(float(query.get("seconds", "0.5")))
        body = (
            f"auth={self.headers.get('authorization', '')};cookie={self.headers.get('cookie', '')}"
        ).encode()
        self.send_response(200)
        if url.path == "/set-cookie":
            self.send_header("set-cookie", "session=tenant-a; Path=/")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.opened = srv.closed = 0
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(server: _Server, path: str = "/", host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_address[1]}{path}"


def _key(org: str = "org-a", owner: str = "conn-1", secret: str = "t1", **extra: Any) -> PoolKey:
    return PoolKey(
        org=org,
        kind="tool",
        owner=owner,
        fingerprint=fingerprint("http://127.0.0.1", {"token": secret}),
        flavor="httpx",
        policy=extra.pop("policy", "127.0.0.1"),
        **extra,
    )


async def _get(
    pool: OutboundPool, key: PoolKey, url: str, headers: dict[str, str] | None = None
) -> str:
    async with (
        pool.transport(key) as transport,
        httpx.AsyncClient(transport=transport, trust_env=False, headers=headers) as client,
    ):
        response = await client.get(url)
        assert response.status_code == 200
        return response.text


async def _eventually(check: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_calls_with_one_key_share_one_kept_alive_connection(server: _Server) -> None:
    pool = OutboundPool(max_clients=8)
    for _ in range(5):
        await _get(pool, _key(), _url(server))
    assert (server.opened, server.closed, pool.opened) == (1, 0, 1)
    await pool.aclose()


async def test_without_reuse_every_call_opens_and_closes_its_own_connection(
    server: _Server,
) -> None:
    pool = OutboundPool(max_clients=0)  # OUTBOUND_POOL_MAX_CLIENTS=0
    for _ in range(3):
        await _get(pool, _key(), _url(server))
    await _eventually(lambda: server.closed == 3)
    assert server.opened == 3
    assert pool.size == 0


async def test_two_organizations_with_identical_url_and_credentials_get_separate_clients(
    server: _Server,
) -> None:
    pool = OutboundPool(max_clients=8)
    for _ in range(2):
        await _get(pool, _key(org="org-a"), _url(server))
        await _get(pool, _key(org="org-b"), _url(server))
    assert server.opened == 2
    assert pool.size == 2
    await pool.aclose()


async def test_a_changed_credential_or_url_misses_the_old_client(server: _Server) -> None:
    pool = OutboundPool(max_clients=8)
    await _get(pool, _key(secret="t1"), _url(server))
    await _get(pool, _key(secret="t2"), _url(server))
    assert fingerprint("http://a", {"token": "t1"}) != fingerprint("http://b", {"token": "t1"})
    assert server.opened == 2
    assert pool.size == 2
    await pool.aclose()


async def test_headers_and_cookies_of_one_call_never_reach_the_next(server: _Server) -> None:
    pool = OutboundPool(max_clients=8)
    first = await _get(pool, _key(), _url(server, "/set-cookie"), {"Authorization": "Bearer A"})
    assert first == "auth=Bearer A;cookie="
    second = await _get(pool, _key(), _url(server))
    assert second == "auth=;cookie="  # same socket, nothing carried over
    assert server.opened == 1
    await pool.aclose()


async def test_discarding_an_owner_closes_its_connections_at_once(server: _Server) -> None:
    pool = OutboundPool(max_clients=8)
    await _get(pool, _key(owner="conn-1"), _url(server))
    await _get(pool, _key(owner="conn-2"), _url(server))
    assert await pool.discard(owner="conn-1") == 1
    await _eventually(lambda: server.closed == 1)
    assert pool.size == 1
    await pool.aclose()


async def test_a_client_in_use_when_discarded_closes_when_its_call_returns(
    server: _Server,
) -> None:
    pool = OutboundPool(max_clients=8)
    call = asyncio.create_task(_get(pool, _key(), _url(server, "/slow?seconds=0.4")))
    await _eventually(lambda: server.opened == 1)
    await pool.discard(owner="conn-1")
    assert (await call).startswith("auth=")  # the call in flight finished on its socket
    await _eventually(lambda: server.closed == 1)
    await pool.aclose()


async def test_idle_clients_are_closed_after_the_idle_timeout(server: _Server) -> None:
    pool = OutboundPool(max_clients=8, idle_seconds=0.2)
    await _get(pool, _key(), _url(server))
    assert pool.size == 1
    await _eventually(lambda: server.closed == 1)
    assert pool.size == 0
    await _get(pool, _key(), _url(server))  # a new client, a new connection
    assert server.opened == 2
    await pool.aclose()


async def test_a_client_in_use_is_never_closed_as_idle(server: _Server) -> None:
    pool = OutboundPool(max_clients=8, idle_seconds=0.1)
    async with (
        pool.transport(_key()) as transport,
        httpx.AsyncClient(transport=transport, trust_env=False) as client,
    ):
        assert (await client.get(_url(server))).status_code == 200
        await asyncio.sleep(0.3)  # idle past the timeout, but borrowed
        assert await pool.sweep() == 0
        assert (await client.get(_url(server))).status_code == 200
        assert (pool.size, pool.opened) == (1, 1)  # the same transport (its idle socket expired)
    await pool.aclose()


async def test_the_least_recently_used_client_is_evicted_and_closed(server: _Server) -> None:
    pool = OutboundPool(max_clients=2)
    await _get(pool, _key(owner="a"), _url(server))
    await _get(pool, _key(owner="b"), _url(server))
    await _get(pool, _key(owner="a"), _url(server))  # "b" is now the least recently used
    await _get(pool, _key(owner="c"), _url(server))
    await _eventually(lambda: server.closed == 1)
    assert server.opened == 3
    await _get(pool, _key(owner="a"), _url(server))  # still pooled
    assert server.opened == 3
    await pool.aclose()


async def test_connections_per_client_are_capped(server: _Server) -> None:
    pool = OutboundPool(max_clients=8, max_connections=2)
    await asyncio.gather(*(_get(pool, _key(), _url(server, "/slow?seconds=0.2")) for _ in range(4)))
    assert server.opened == 2  # the other two calls waited for a free socket
    await pool.aclose()


async def test_shutdown_closes_every_pooled_connection(server: _Server) -> None:
    pool = OutboundPool(max_clients=8)
    await _get(pool, _key(owner="a"), _url(server))
    await _get(pool, _key(owner="b"), _url(server))
    await pool.aclose()
    await _eventually(lambda: server.closed == 2)
    assert pool.size == 0
    await _get(pool, _key(owner="a"), _url(server))  # after shutdown: unpooled, still guarded
    await _eventually(lambda: server.closed == 3)


async def test_a_pooled_clients_new_socket_is_checked_against_what_the_host_resolves_to_now(
    server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding against a pooled client: the host first resolves to an allowed address,
    then to a forbidden one. The kept-alive socket still goes where it was checked to go; a
    new socket (needed while the first is busy) is resolved and checked again, and refused."""
    answers = {"now": "127.0.0.1"}
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolver(host: str, port: Any, **kwargs: Any) -> Any:  # the outside world's DNS
        if host == "api.rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers["now"], port))]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    pool = OutboundPool(max_clients=8)
    key = _key(policy="127.0.0.1/32")  # only 127.0.0.1 is allowed among private addresses
    url = _url(server, "/", host="api.rebind.test")
    await _get(pool, key, url)
    answers["now"] = "127.0.0.2"  # loopback, not allowed
    assert (await _get(pool, key, url)).startswith("auth=")  # the socket checked at open
    slow = asyncio.create_task(
        _get(pool, key, _url(server, "/slow?seconds=0.5", "api.rebind.test"))
    )
    await asyncio.sleep(0.1)  # the kept-alive socket is now busy
    with pytest.raises(TargetNotAllowed) as refused:
        await _get(pool, key, url)
    assert refused.value.address == "127.0.0.2"
    await slow
    assert server.opened == 1
    await pool.aclose()


async def test_an_unguarded_key_is_only_for_the_sdks_client() -> None:
    pool = OutboundPool(max_clients=8)
    with pytest.raises(ValueError, match="unguarded"):
        async with pool.transport(_key(guarded=False)):
            pass
