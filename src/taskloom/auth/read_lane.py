"""The hottest reads (the list endpoints) without FastAPI's per-request machinery: the usual
request, a bearer token and a query its `Lane` takes, is answered by a plain ASGI handler that
calls the route's own function and serializes with its own response model, at about three
quarters of the CPU (docs/PERFORMANCE.md, issue 20). Dashboards and API clients poll these.

Anything else (another query, a missing or repeated Authorization header, another method) goes
to the route before any work, so the route stays the documented operation and answers what is
unusual as ever (its 401s and 422s). Once the lane has taken a request it answers it as the
route would: the same authentication, rate limit and role (auth/deps.viewer_reads), the same
read transaction and service call (the route's function), the same JSON; refusals are the same
DomainErrors. Like the execute lane (executions/lane.py) it is innermost, so every middleware
(request id, metrics under the route's path, security and rate-limit headers, input guard,
unexpected errors) applies to it unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute, APIRouter
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from taskloom.auth.deps import viewer_reads
from taskloom.errors import DomainError, error_response

# The endpoint's keyword arguments (besides `ctx`) from the query's (name, value) pairs, or None
# when the lane does not take that query (the route answers it).
Arguments = Callable[[list[tuple[str, str]]], dict[str, Any] | None]


@dataclass(frozen=True)
class Lane:
    route: APIRoute  # declared with auth/deps.ViewerReads as its `ctx`; a path without parameters
    arguments: Arguments


def lane_of(router: APIRouter, endpoint: Callable[..., Any], arguments: Arguments) -> Lane:
    """The lane of the route of `router` whose function is `endpoint`."""
    route = next(r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)
    return Lane(route, arguments)


def no_query(query: list[tuple[str, str]]) -> dict[str, Any] | None:
    """For a route without query parameters: only a request without a query."""
    return {} if not query else None


class ReadLane:
    """The ASGI middleware (innermost) that answers the usual request of its lanes itself."""

    def __init__(self, app: ASGIApp, *, lanes: Sequence[Lane]) -> None:
        self.app = app
        self._lanes = {lane.route.path: lane for lane in lanes}
        self._answers = {lane.route.path: TypeAdapter(lane.route.response_model) for lane in lanes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        lane = self._lanes.get(scope["path"])
        token = _bearer(scope) if lane is not None else None
        if lane is None or token is None:
            await self.app(scope, receive, send)
            return
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        arguments = lane.arguments(query)
        if arguments is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = lane.route  # the metrics' path label and the rate limit's class
        try:
            ctx = await viewer_reads(Request(scope, receive), token)
            answer = await lane.route.endpoint(ctx, **arguments)
        except DomainError as refused:
            response = error_response(
                refused.status_code,
                refused.code,
                refused.message,
                refused.details,
                refused.headers,
            )
            await response(scope, receive, send)
            return
        content = self._answers[lane.route.path].dump_json(answer)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(content)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def _bearer(scope: Scope) -> str | None:
    """The bearer token of a request with exactly one Authorization header; None otherwise."""
    token = None
    seen = False
    for name, value in scope["headers"]:
        if name == b"authorization":
            if seen:
                return None
            seen = True
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                token = credentials.strip()
    return token
