"""Health endpoints. `/health/live` says only that the process answers; it touches nothing.
`/health/queue` reports the orchestration queue: live workers and job counts by state (no
tenant data), 503 when Redis cannot be asked."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from taskloom.queue.worker import live_workers
from taskloom.runtime import Runtime

router = APIRouter(prefix="/health", tags=["health"])
log = structlog.get_logger("taskloom.health")


@router.get("/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/queue", response_model=None)
async def queue(request: Request) -> dict[str, Any] | JSONResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        workers = await live_workers(runtime)
        counts = await runtime.queue.counts()
    except (RedisError, OSError) as exc:
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
