"""X-Request-ID: honour a well-formed incoming id or make one; return it on every response and
bind it into every log line. Plain ASGI middleware, so it also wraps error responses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def is_valid_request_id(candidate: str) -> bool:
    """8-128 characters of letters, digits and `._:-`: nothing a log line, a header or an SQL
    literal (db/tenancy.py) could be confused by."""
    return _VALID.fullmatch(candidate) is not None


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Restore a request id outside a request (a worker running the job the request queued):
    log lines carry it and outgoing HTTP calls send it."""
    if not request_id or not is_valid_request_id(request_id):
        yield
        return
    token = _request_id.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        yield
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
        _request_id.reset(token)


def accept_or_make(candidate: str | None) -> str:
    """The incoming id when it is 8-128 safe characters, otherwise a fresh one."""
    if candidate and is_valid_request_id(candidate):
        return candidate
    return uuid.uuid4().hex


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        request_id = accept_or_make(incoming)
        token = _request_id.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")
            _request_id.reset(token)
