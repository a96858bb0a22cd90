"""The API's rate limits: per API key or signed-in session by class of route (reads, writes,
execute), and per client IP on /auth/*; counted in Redis by GCRA (taskloom/auth/ratelimit.py).

Every answer of a limited route says where its caller stands, in the fields of
draft-ietf-httpapi-ratelimit-headers (structured fields, draft 09 and later):

    RateLimit-Policy: "reads";q=1200;w=60
    RateLimit: "reads";r=1187;t=1

`q` requests per `w` seconds; `r` left now, `t` seconds until the quota is whole again (on a 429:
until the next request is allowed, the same as Retry-After). A /auth route that also
authenticates lists both of its policies. See docs/SECURITY.md "Rate limits".
"""

from __future__ import annotations

import uuid

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskloom.auth import ratelimit
from taskloom.auth.ratelimit import Allowance, Rate
from taskloom.errors import RateLimited
from taskloom.runtime import Runtime

READS, WRITES, EXECUTE, AUTH = "reads", "writes", "execute", "auth"

# Routes that start an execution (API and web UI): the "execute" class when POSTed.
EXECUTE_ROUTES = frozenset(
    {
        "/api/workflows/{workflow_id}/execute",
        "/api/executions/{execution_id}/retry",
        "/ui/workflows/{workflow_id}/run",
        "/ui/executions/{execution_id}/retry",
    }
)
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_STATE = "rate_limits"  # request.state: the allowances this request was counted against


def rate(runtime: Runtime, name: str) -> Rate:
    settings = runtime.settings
    quota = {
        READS: settings.rate_limit_reads,
        WRITES: settings.rate_limit_writes,
        EXECUTE: settings.rate_limit_execute,
        AUTH: settings.rate_limit_auth_per_ip,
    }[name]
    return Rate(name=name, quota=quota, window_seconds=settings.rate_limit_window_seconds)


def route_class(request: Request) -> str:
    """reads (GET/HEAD), execute (POST to a route in EXECUTE_ROUTES) or writes."""
    if request.method in _READ_METHODS:
        return READS
    path = getattr(request.scope.get("route"), "path", None)
    return EXECUTE if request.method == "POST" and path in EXECUTE_ROUTES else WRITES


async def _count(request: Request, runtime: Runtime, key: str, name: str) -> None:
    allowance = await ratelimit.take(redis=runtime.redis, key=key, rate=rate(runtime, name))
    enforce(request, allowance)


def enforce(request: Request, allowance: Allowance) -> None:
    """Note the allowance for the response's fields; RateLimited if it refused the request."""
    name = allowance.rate.name
    found: dict[str, Allowance] = getattr(request.state, _STATE, None) or {}
    found[name] = allowance  # a UI page that refreshed its token is counted once per try
    setattr(request.state, _STATE, found)
    if not allowance.allowed:
        raise RateLimited(
            f"too many {name} requests for this "
            f"{'client address' if name == AUTH else 'API key or session'}; try again later",
            retry_after=allowance.reset_seconds,
        )


def principal_limit(
    request: Request, runtime: Runtime, *, api_key: str | None, session_id: uuid.UUID | None
) -> tuple[Rate, str] | None:
    """The rate and counter an authenticated request is counted against: its API key's (by a
    keyed hash of it, before the database is asked) or its session's, in the route's class.
    None when rate limits are off. The count itself is taken together with the principal
    cache's check (taskloom/auth/principal_cache.py), in one round trip."""
    if not runtime.settings.rate_limits_enabled:
        return None
    name = route_class(request)
    if api_key is not None:
        key = ratelimit.api_key_key(
            settings=runtime.settings, keys=runtime.keys, rate=name, token=api_key
        )
    else:
        assert session_id is not None
        key = ratelimit.session_key(keys=runtime.keys, rate=name, session_id=session_id)
    return rate(runtime, name), key


async def limit_auth_ip(request: Request) -> None:
    """Dependency of every /auth route: count the request against its client IP."""
    runtime: Runtime = request.app.state.runtime
    if not runtime.settings.rate_limits_enabled:
        return
    ip = request.client.host if request.client else None
    key = ratelimit.auth_ip_key(settings=runtime.settings, keys=runtime.keys, ip=ip)
    await _count(request, runtime, key, AUTH)


def headers(allowances: dict[str, Allowance]) -> list[tuple[bytes, bytes]]:
    """The RateLimit-Policy and RateLimit fields (each one List of Items, one per policy)."""
    policies = ", ".join(
        f'"{a.rate.name}";q={a.rate.quota};w={a.rate.window_seconds}' for a in allowances.values()
    )
    limits = ", ".join(
        f'"{a.rate.name}";r={a.remaining};t={a.reset_seconds}' for a in allowances.values()
    )
    return [(b"ratelimit-policy", policies.encode()), (b"ratelimit", limits.encode())]


class RateLimitHeadersMiddleware:
    """Adds the fields to the answer of any request that was counted (successes, errors and
    429s alike; pages of the web UI too, which build their own responses)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                allowances = (scope.get("state") or {}).get(_STATE)
                if allowances:
                    fields = [*message.get("headers", []), *headers(allowances)]
                    message = {**message, "headers": fields}
            await send(message)

        await self.app(scope, receive, send_with_fields)
