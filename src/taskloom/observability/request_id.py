"""X-Request-ID: the request's id, honoured when the client sent a well-formed one and made
otherwise; bound into every log line and returned on every response by the outermost middleware
(observability/requests.py), sent on outgoing HTTP calls, and carried by the jobs a request
queues."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

import structlog

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:\-]{8,128}")
_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    return _request_id.get()


def is_valid_request_id(candidate: str) -> bool:
    """8-128 characters of letters, digits and `._:-`: nothing a log line, a header or an SQL
    literal (db/tenancy.py) could be confused by."""
    return _VALID.fullmatch(candidate) is not None


def bind(request_id: str) -> Token[str | None]:
    """Make `request_id` the current one (and its log lines'); `unbind` with the token."""
    token = _request_id.set(request_id)
    structlog.contextvars.bind_contextvars(request_id=request_id)
    return token


def unbind(token: Token[str | None]) -> None:
    structlog.contextvars.unbind_contextvars("request_id")
    _request_id.reset(token)


@contextmanager
def bound_request_id(request_id: str | None) -> Iterator[None]:
    """Restore a request id outside a request (a worker running the job the request queued):
    log lines carry it and outgoing HTTP calls send it."""
    if not request_id or not is_valid_request_id(request_id):
        yield
        return
    token = bind(request_id)
    try:
        yield
    finally:
        unbind(token)


def accept_or_make(candidate: str | None) -> str:
    """The incoming id when it is 8-128 safe characters, otherwise a fresh one."""
    if candidate and is_valid_request_id(candidate):
        return candidate
    return uuid.uuid4().hex
