"""taskloom/outbound.py, the bounded exchange every tenant-chosen URL is read through, against
real servers on 127.0.0.1: a compressed answer is inflated only up to the cap."""

from __future__ import annotations

import gzip
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from taskloom.outbound import ResponseTooLarge, send_bounded
from tests.fakes.hostile import BOMB_BYTES, HostileServer

CAP = 64 * 1024


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_a_gzip_bomb_is_inflated_only_up_to_the_cap(http: httpx.AsyncClient) -> None:
    """50 KiB on the wire, 50 MiB inflated: httpx's decoder inflates a network read whole."""
    with HostileServer("gzip_bomb") as server:
        tracemalloc.start()
        try:
            response = await send_bounded(
                http,
                http.build_request("GET", server.url),
                deadline_seconds=10,
                max_bytes=CAP,
                truncate=True,
            )
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert response.content == b" " * CAP
        assert peak < 8 * 1024 * 1024 < BOMB_BYTES, peak
        with pytest.raises(ResponseTooLarge):
            await send_bounded(
                http,
                http.build_request("GET", server.url),
                deadline_seconds=10,
                max_bytes=4 * 1024 * 1024,
                truncate=False,
            )


PLAIN = b'{"items": ["' + b"x" * 5000 + b'"]}'
ENCODED = {
    "/gzip": ("gzip", gzip.compress(PLAIN)),
    "/zlib": ("deflate", zlib.compress(PLAIN)),  # zlib-wrapped, as RFC 9110 says
    "/raw-deflate": ("deflate", zlib.compress(PLAIN)[2:-4]),  # as some servers send it
    "/identity": ("identity", PLAIN),
}


@pytest.fixture(scope="module")
def encoding_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            encoding, body = ENCODED[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ENCODED)
async def test_compressed_answers_within_the_cap_arrive_whole_and_decoded(
    http: httpx.AsyncClient, encoding_server: str, path: str
) -> None:
    response = await send_bounded(
        http,
        http.build_request("GET", encoding_server + path),
        deadline_seconds=5,
        max_bytes=CAP,
        truncate=False,
    )
    assert response.content == PLAIN
    assert response.json() == {"items": ["x" * 5000]}
    assert "content-encoding" not in response.headers
