"""The HTTP response that streams a data export, with a deadline on every chunk.

An export's document holds a connection of the export pool and an open snapshot for as long as
it is being written, and it is written only as fast as the client reads: a client that stops
reading (and keeps its socket open) would keep both forever. Each chunk must be taken within
GDPR_EXPORT_CHUNK_SEND_TIMEOUT_SECONDS; past that the export is abandoned: the document is
closed (its transaction rolled back, its connection back in the pool) and the response ends
unfinished, so the server closes the connection and the client sees a truncated download."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import anyio
import structlog
from starlette.responses import StreamingResponse
from starlette.types import Message, Send

log = structlog.get_logger("taskloom.gdpr")


class _ClientStoppedReading(Exception):
    """A chunk was not taken in time."""


class DeadlineStreamingResponse(StreamingResponse):
    """A StreamingResponse whose client gets `send_timeout` seconds to take each chunk, and
    whose body is closed however the response ends (finished, abandoned, disconnected)."""

    def __init__(
        self, body: AsyncGenerator[bytes, None], *, send_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(body, **kwargs)
        self._body = body
        self._send_timeout = send_timeout

    async def stream_response(self, send: Send) -> None:
        async def deliver(message: Message) -> None:
            try:
                async with asyncio.timeout(self._send_timeout):
                    await send(message)
            except TimeoutError as stalled:
                raise _ClientStoppedReading from stalled

        try:
            start = {"status": self.status_code, "headers": self.raw_headers}
            await deliver({"type": "http.response.start", **start})
            async for chunk in self._body:
                if chunk:
                    await deliver({"type": "http.response.body", "body": chunk, "more_body": True})
            await deliver({"type": "http.response.body", "body": b"", "more_body": False})
        except _ClientStoppedReading:
            # Returning with the response unfinished makes the server drop the connection.
            log.warning("export_abandoned", reason="client_stopped_reading")
        finally:
            # Shielded: on a client disconnect Starlette cancels this task, and the rollback
            # and the connection's return to the pool must still run.
            with anyio.CancelScope(shield=True):
                try:
                    await self._body.aclose()
                except Exception:
                    log.warning("export_close_failed", exc_info=True)


def export_response(
    body: AsyncGenerator[bytes, None], *, fmt: str, exported_at: datetime, send_timeout: float
) -> DeadlineStreamingResponse:
    """The download of an export started by `service.start_export`."""
    stamp = exported_at.strftime("%Y%m%dT%H%M%SZ")
    return DeadlineStreamingResponse(
        body,
        send_timeout=send_timeout,
        media_type="application/zip" if fmt == "zip" else "application/json",
        headers={
            "Content-Disposition": f'attachment; filename="taskloom-export-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )
