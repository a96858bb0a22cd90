"""One outbound HTTP exchange, bounded: an overall deadline and a cap on the bytes read.

httpx's `timeout` bounds each network read, not the exchange: a server that sends one byte every
few seconds keeps a request alive for ever, and `response.read()` buffers a body of any size.
Everything Taskloom sends to a tenant-chosen URL (webhooks, tool connections, `http` steps)
therefore reads through here: `read_at_most` streams at most `limit` bytes (decompressing gzip
and deflate itself, so a compression bomb is cut at `limit` too), and `send_bounded` runs the
whole exchange (connect, headers, body) under one `asyncio.timeout`.
"""

from __future__ import annotations

import asyncio
import zlib

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


class _Inflater:
    """gzip or deflate, decompressed to at most a given number of bytes per call: a small
    compressed chunk may expand a thousandfold (httpx's own decoders inflate it whole)."""

    def __init__(self, encoding: str) -> None:
        self._raw_deflate_next = encoding == "deflate"  # servers send zlib-wrapped or raw
        wbits = zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS
        self._z = zlib.decompressobj(wbits)
        self._started = False

    def inflate(self, data: bytes, room: int) -> bytes:
        try:
            out = self._z.decompress(data, room)
        except zlib.error as error:
            if not (self._raw_deflate_next and not self._started):
                raise httpx.DecodingError(f"the body does not decompress ({error})") from None
            self._raw_deflate_next = False
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)
            return self.inflate(data, room)
        self._started = True
        return out


def _inflater(response: httpx.Response) -> _Inflater | None:
    """The decompressor for the response's Content-Encoding; None to take the bytes as sent
    (no encoding, or one httpx would not decode either)."""
    encodings = [
        name.strip().lower()
        for name in response.headers.get("content-encoding", "").split(",")
        if name.strip().lower() not in ("", "identity")
    ]
    if not encodings or encodings[-1] not in ("gzip", "x-gzip", "deflate"):
        return None
    if len(encodings) > 1:
        raise httpx.DecodingError("stacked content encodings are not supported")
    return _Inflater(encodings[0])


async def read_at_most(
    response: httpx.Response, limit: int, *, truncate: bool, decode: bool = True
) -> bytes:
    """Stream the body (decompressed, or as sent when not `decode`), stopping once more than
    `limit` bytes arrived: the first `limit` bytes when `truncate`, else ResponseTooLarge. The
    rest is never read, and never inflated: memory stays within `limit` plus one network read."""
    inflater = _inflater(response) if decode else None
    body = bytearray()
    async for chunk in response.aiter_raw():
        body += chunk if inflater is None else inflater.inflate(chunk, limit + 1 - len(body))
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
    decode: bool = True,
) -> httpx.Response:
    """Send `request` (redirects are not followed) and read at most `max_bytes` of the answer,
    all within `deadline_seconds` (None: no deadline). The response returned is closed, its
    `content` the body read (still encoded when not `decode`), without the headers that
    described the body on the wire. Raises TimeoutError past the deadline, ResponseTooLarge,
    and httpx's errors."""
    async with asyncio.timeout(deadline_seconds):
        response = await client.send(request, stream=True, follow_redirects=False)
        try:
            body = await read_at_most(response, max_bytes, truncate=truncate, decode=decode)
        finally:
            await response.aclose()
    headers = httpx.Headers(response.headers)
    for name in _WIRE_HEADERS:
        headers.pop(name, None)
    return httpx.Response(
        response.status_code, headers=headers, content=body, request=response.request
    )
