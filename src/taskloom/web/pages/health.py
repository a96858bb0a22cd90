"""Operations health (organization admins and instance administrators): the database and
Redis checks, this API process's circuit breakers (an organization admin sees their own
connections' only), the queue's workers and job counts, and the organization's failed
executions."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from taskloom.breakers import BREAKERS
from taskloom.errors import Forbidden
from taskloom.executions import service as executions
from taskloom.health import checks, circuits
from taskloom.orgs.models import Role
from taskloom.queue.worker import live_workers
from taskloom.runtime import Runtime
from taskloom.web.errors import UiRoute
from taskloom.web.rendering import render
from taskloom.web.session import signed_in

router = APIRouter(prefix="/ui/admin/health", route_class=UiRoute, include_in_schema=False)


async def _queue(runtime: Runtime) -> dict[str, Any]:
    """Workers and job counts, within the health checks' time limit (as /health/queue)."""
    try:
        workers = await asyncio.wait_for(live_workers(runtime), checks.CHECK_SECONDS)
        counts = await asyncio.wait_for(runtime.queues.health_counts(), checks.CHECK_SECONDS)
    except (RedisError, OSError, TimeoutError):
        return {"ok": False, "error": "Redis did not answer", "workers": [], "counts": {}}
    return {"ok": bool(workers), "error": None, "workers": workers, "counts": counts}


@router.get("")
async def health(request: Request) -> Response:
    async with signed_in(request) as page:
        org_admin = page.principal.has_role(Role.ADMIN)
        if not (org_admin or page.principal.is_superuser):
            raise Forbidden("this page needs the admin role or higher")
        runtime = page.runtime
        database, cache, queue = await asyncio.gather(
            checks.database(runtime), checks.redis(runtime), _queue(runtime)
        )
        failed = (
            await executions.failed_executions(db=page.db, principal=page.principal, limit=20)
            if org_admin
            else []
        )
        return render(
            page,
            "admin/health.html",
            title="Health",
            database=database,
            cache=cache,
            queue=queue,
            breakers=await circuits.visible_breakers(
                db=page.db, principal=page.principal, breakers=BREAKERS.all()
            ),
            failed=failed,
        )
