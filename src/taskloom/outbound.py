"""One outbound HTTP exchange, bounded: an overall deadline and a cap on the bytes read.

httpx's `timeout` bounds each network read, not the exchange: a server that sends one byte every
few seconds keeps a request alive for ever, and `response.read()` buffers a body of any size.
Everything Taskloom sends to a tenant-chosen URL (webhooks, tool connections, `http` steps)
therefore reads through here: `read_at_most` streams at most `limit` bytes, and `send_bounded`
runs the whole exchange (connect, headers, body) under one `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio

import httpx

# Headers describing the body as it came over the wire; the body handed back is already decoded
# (and perhaps truncated), so they would no longer be true of it.
_WIRE_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class ResponseTooLarge(Exception):
    """The body is longer than the reader would take (and truncating was not asked for)."""

    def __init__(self, host: str, limit: int) -> None:
        super().__init__(f"the response from {host} is larger than {limit} bytes")
        self.host = host
        self.limit = limit


async def read_at_most(response: httpx.Response, limit: int, *, truncate: bool) -> bytes:
    """Stream the (decoded) body, stopping once more than `limit` bytes arrived: the first
    `limit` bytes when `truncate`, else ResponseTooLarge. The rest is never read."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise ResponseTooLarge(response.url.host, limit)
    return bytes(body)


async def send_bounded(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    deadline_seconds: float | None,
    max_bytes: int,
    truncate: bool,
) -> httpx.Response:
    """Send `request` (redirects are not followed) and read at most `max_bytes` of the answer,
    all within `deadline_seconds` (None: no deadline). The response returned is closed, its
    `content` the body read. Raises TimeoutError past the deadline, ResponseTooLarge, and
    httpx's errors."""
    async with asyncio.timeout(deadline_seconds):
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            body = await read_at_most(response, max_bytes, truncate=truncate)
        finally:
            await response.aclose()
    headers = httpx.Headers(response.headers)
    for name in _WIRE_HEADERS:
        headers.pop(name, None)
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=response.request
    )
