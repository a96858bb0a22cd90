"""GET /metrics: the Prometheus exposition of this process (or, with PROMETHEUS_MULTIPROC_DIR
set, of every process sharing that directory). Optionally behind a bearer token."""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import CollectorRegistry
from redis.exceptions import RedisError

from taskloom.errors import Unauthorized
from taskloom.observability.metrics import DB_POOL, QUEUE_JOBS, REQUEST_WINDOW
from taskloom.runtime import Runtime

router = APIRouter(tags=["observability"])
log = structlog.get_logger("taskloom.metrics")


def _registry(request: Request) -> CollectorRegistry:
    directory = request.app.state.runtime.settings.prometheus_multiproc_dir
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    registry.register(REQUEST_WINDOW)  # this process's SLI window (see docs/OBSERVABILITY.md)
    return registry


QUEUE_COUNTS_TTL_SECONDS = 5.0
_last_refresh = 0.0


async def _refresh_queue_gauges(runtime: Runtime) -> None:
    """`queue_jobs{queue,state}` from Redis, at most every few seconds, never failing a scrape."""
    global _last_refresh
    now = time.monotonic()
    if now - _last_refresh < QUEUE_COUNTS_TTL_SECONDS:
        return
    _last_refresh = now
    try:
        for queue in runtime.queues:
            counts = await asyncio.wait_for(queue.counts(), 1.0)
            for state, count in counts.items():
                QUEUE_JOBS.labels(queue.name, state).set(count)
    except (RedisError, OSError, TimeoutError):
        log.warning("queue_gauges_unavailable")


def _refresh_pool_gauges(runtime: Runtime) -> None:
    for name, engine in (
        ("app", runtime.database.app_engine),
        ("system", runtime.database.system_engine),
        ("export", runtime.database.export_engine),
    ):
        pool: Any = engine.sync_engine.pool
        DB_POOL.labels(name, "in_use").set(pool.checkedout())
        DB_POOL.labels(name, "idle").set(pool.checkedin())
        DB_POOL.labels(name, "overflow").set(max(pool.overflow(), 0))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    token = request.app.state.runtime.settings.metrics_token
    if token is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise Unauthorized("a valid metrics token is required", code="invalid_token")
    await _refresh_queue_gauges(request.app.state.runtime)
    _refresh_pool_gauges(request.app.state.runtime)
    return Response(generate_latest(_registry(request)), media_type=CONTENT_TYPE_LATEST)
