"""Health endpoints, for load balancers and orchestrators; none needs authentication, none
changes anything, each answers within 2 s even when a dependency hangs.

- `/health/live`: the process answers (touches nothing);
- `/health/ready`: PostgreSQL reachable and at the latest migration, Redis reachable;
- `/health/db`, `/health/redis`: one dependency, with its latency;
- `/health/circuits`: 503 while any circuit breaker is open or half-open; counts by state (with
  an admin's bearer token, also their organization's breakers by connection);
- `/health/queue`: live workers and job counts by state (no tenant data).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from taskloom.auth.access import access
from taskloom.auth.deps import OptionalContext
from taskloom.breakers import BREAKERS
from taskloom.health import checks
from taskloom.health import circuits as breaker_views
from taskloom.queue.worker import live_workers
from taskloom.runtime import Runtime

router = APIRouter(prefix="/health", tags=["health"])
log = structlog.get_logger("taskloom.health")


@router.get("/live", openapi_extra=access("public"))
async def live() -> dict[str, str]:
    return {"status": "ok"}


def _answer(body: dict[str, Any], ok: bool) -> JSONResponse:
    return JSONResponse(status_code=200 if ok else 503, content=body)


@router.get("/db", openapi_extra=access("public"))
async def db(request: Request) -> JSONResponse:
    check = await checks.database(request.app.state.runtime)
    return _answer(check.as_json(), check.ok)


@router.get("/redis", openapi_extra=access("public"))
async def redis(request: Request) -> JSONResponse:
    check = await checks.redis(request.app.state.runtime)
    return _answer(check.as_json(), check.ok)


@router.get("/ready", openapi_extra=access("public"))
async def ready(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    database, cache = await asyncio.gather(checks.database(runtime), checks.redis(runtime))
    ok = database.ok and cache.ok
    body = {
        "status": "ready" if ok else "not_ready",
        "checks": {"database": database.as_json(), "redis": cache.as_json()},
    }
    return _answer(body, ok)


@router.get("/circuits", openapi_extra=access("public"))
async def circuits(ctx: OptionalContext) -> JSONResponse:
    """200 when every circuit breaker of this process is closed, else 503, with counts by state.
    With a bearer token, also each breaker the caller may see (`circuits`): an organization
    admin their organization's connections, an instance admin all; others get 403."""
    breakers = BREAKERS.all()
    counts = breaker_views.state_counts(breakers)
    ok = counts["open"] == counts["half_open"] == 0
    body: dict[str, Any] = {
        "status": "ok" if ok else "degraded",
        "breakers": len(breakers),
        "states": counts,
    }
    if ctx is not None:
        shown = await breaker_views.visible_breakers(
            db=ctx.db, principal=ctx.principal, breakers=breakers
        )
        body["circuits"] = [breaker_views.describe(b) for b in shown]
    return _answer(body, ok)


@router.get("/queue", response_model=None, openapi_extra=access("public"))
async def queue(request: Request) -> dict[str, Any] | JSONResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        workers = await asyncio.wait_for(live_workers(runtime), checks.CHECK_SECONDS)
        counts = await asyncio.wait_for(runtime.queues.health_counts(), checks.CHECK_SECONDS)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("queue_health_failed", error=repr(exc))
        return JSONResponse(
            status_code=503, content={"status": "unavailable", "error": "Redis did not answer"}
        )
    return {
        "status": "ok" if workers else "no_workers",
        # No host names or pids here: this endpoint needs no authentication.
        "workers": [
            {k: w.get(k) for k in ("concurrency", "running", "started_at")} for w in workers
        ],
        "workers_online": len(workers),
        "jobs": counts,
    }
