"""Domain exceptions and their one mapping to `{"error": {"code", "message", "request_id"}}`.

Services raise these; routes never build error responses themselves. Anything unexpected is a
500 `internal_error` (and a bug): its details are logged, never sent to the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.observability import sentry
from taskloom.observability.request_id import current_request_id

log = structlog.get_logger("taskloom.errors")


class DomainError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details
        self.headers = headers


class BadRequest(DomainError):
    status_code, code = 400, "bad_request"


class Unauthorized(DomainError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str = "authentication required", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(DomainError):
    status_code, code = 403, "forbidden"


class NotFound(DomainError):
    status_code, code = 404, "not_found"


class Conflict(DomainError):
    status_code, code = 409, "conflict"


class Gone(DomainError):
    status_code, code = 410, "gone"


class PreconditionFailed(DomainError):
    """A conditional request's precondition (`If-Match`) does not hold."""

    status_code, code = 412, "precondition_failed"


class PayloadTooLarge(DomainError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaType(DomainError):
    status_code, code = 415, "unsupported_media_type"


class ValidationFailed(DomainError):
    status_code, code = 422, "validation_failed"


class RateLimited(DomainError):
    status_code, code = 429, "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})


class Busy(DomainError):
    """A bounded resource is fully in use: the same request may succeed after Retry-After."""

    status_code, code = 503, "busy"

    def __init__(self, message: str, *, code: str, retry_after: int) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, retry_after))})


class TooManyQueued(RateLimited):
    """The organization already has MAX_QUEUED_PER_ORG executions waiting."""

    code = "too_many_queued_executions"


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None
    # Validation errors: {"errors": [{"loc": [...], "message": ...}]}; other errors may add
    # their own keys (e.g. the organizations that block an erasure).
    details: Any = None


class ErrorResponse(BaseModel):
    """Every error answer: `{"error": {"code", "message", "request_id", "details"?}}`."""

    error: ErrorDetail


# Documented on every operation (FastAPI lists only each route's success status by itself).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Malformed request (e.g. invalid JSON, a bad cursor)"),
        (401, "Missing, invalid, expired or revoked credentials"),
        (403, "Authenticated, but not allowed to do this"),
        (404, "No such resource in the caller's organization"),
        (409, "Conflicts with the current state"),
        (413, "Request body too large"),
        (422, "Invalid input; details.errors names each field"),
        (429, "Rate limited; see Retry-After"),
        (503, "PostgreSQL, Redis or a bounded resource unavailable; retry after Retry-After"),
    )
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "request_id": current_request_id()}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), status_code=status, headers=dict(headers or {})
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _validation_details(exc: RequestValidationError) -> tuple[str, str, list[dict[str, Any]]]:
    details = []
    malformed = False
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            malformed = True
        details.append(
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "type": err.get("type", "invalid"),
                "message": err.get("msg", "invalid value"),
            }
        )
    if malformed:
        return "malformed_json", "the request body is not valid JSON", details
    first = details[0] if details else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"]) or "request"
    return "validation_failed", f"{where}: {first['message']}", details


_PG_UNAVAILABLE = (
    "TooManyConnectionsError",
    "CannotConnectNowError",
    "ConnectionDoesNotExistError",
    "ConnectionFailureError",
    "AdminShutdownError",
)


def unavailable_dependency(exc: BaseException) -> str | None:
    """ "PostgreSQL" or "Redis" when `exc` says that server cannot be reached or is full (a
    condition that passes), else None."""
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return "Redis"
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:  # SQLAlchemy wraps asyncpg's errors twice
        chain.append(seen)
        seen = getattr(seen, "orig", None) or seen.__cause__
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "PostgreSQL"
    if any(type(e).__name__ in _PG_UNAVAILABLE for e in chain):
        return "PostgreSQL"
    if any(isinstance(e, ConnectionError) for e in chain):
        # asyncpg's connect, raised as is: refused, reset, or "unexpected connection_lost()".
        # (redis-py wraps its socket errors in its own ConnectionError, handled above.)
        return "PostgreSQL"
    return None


class UnexpectedErrorMiddleware:
    """Turn an unexpected exception into the JSON 500 inside the request's scope, so it keeps
    its request id (body, header and log line), counts in the HTTP metrics and reaches Sentry
    once. (Starlette runs an `Exception` handler outside every middleware, where the request id
    is already gone.) Installed innermost by `create_app`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if not started and (dependency := unavailable_dependency(exc)):
                # PostgreSQL or Redis is down or full: say so, and that it is worth retrying.
                log.warning("dependency_unavailable", dependency=dependency, error=repr(exc))
                response = error_response(
                    503,
                    "unavailable",
                    f"{dependency} is unavailable right now; retry shortly",
                    headers={"Retry-After": "5"},
                )
                await response(scope, receive, send)
                return
            log.exception("unhandled_error", path=scope.get("path"), error_type=type(exc).__name__)
            route = getattr(scope.get("route"), "path", None)
            sentry.capture(exc, route=route, request_id=current_request_id())
            if started:  # part of a (streamed) response went out: only closing is left
                raise
            response = error_response(500, "internal_error", "an unexpected error occurred")
            await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message, details = _validation_details(exc)
        status = 400 if code == "malformed_json" else 422
        return error_response(status, code, message, {"errors": details})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
        route = getattr(request.scope.get("route"), "path", None)
        sentry.capture(exc, route=route, request_id=current_request_id())
        return error_response(500, "internal_error", "an unexpected error occurred")
