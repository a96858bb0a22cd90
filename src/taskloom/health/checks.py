"""Dependency checks for the health endpoints. Each is bounded (CHECK_SECONDS), reads only, and
reports no secret: a hung database or Redis makes a check fail in time, not the probe hang."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from taskloom.db.revisions import lineage, schema_state
from taskloom.runtime import Runtime

CHECK_SECONDS = 1.5  # leaves room inside the 2 s every probe answers within


@dataclass
class Check:
    ok: bool
    latency_ms: float | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": "ok" if self.ok else "unavailable"}
        if self.latency_ms is not None:
            body["latency_ms"] = round(self.latency_ms, 2)
        if self.error:
            body["error"] = self.error
        return {**body, **self.details}


async def _timed(probe: Callable[[], Awaitable[dict[str, Any]]], what: str) -> Check:
    started = time.perf_counter()
    try:
        details = await asyncio.wait_for(probe(), CHECK_SECONDS)
    except TimeoutError:
        return Check(False, error=f"{what} did not answer within {CHECK_SECONDS:g} s")
    except Exception as exc:  # any failure is the answer; never a 500 from a probe
        return Check(False, error=f"{what}: {type(exc).__name__}")
    return Check(True, latency_ms=(time.perf_counter() - started) * 1000, details=details)


async def database(runtime: Runtime) -> Check:
    """Reachable, and at a schema this build can run on: its own head, or a newer release's
    that added nothing the previous release trips over (db/revisions.py). Behind, or ahead by
    a migration that breaks_previous, is not ready."""

    async def probe() -> dict[str, Any]:
        async with runtime.database.app_engine.connect() as conn:
            state = await schema_state(conn)
        return {
            "migrations_current": state.status == "current",
            "revision": state.revision,
            "head": lineage()[0],
            "schema": state.status,
            **({"schema_error": state.reason} if state.reason else {}),
        }

    check = await _timed(probe, "PostgreSQL")
    if check.ok and check.details.get("schema_error"):
        check.ok, check.error = False, check.details.pop("schema_error")
    return check


async def redis(runtime: Runtime) -> Check:
    async def probe() -> dict[str, Any]:
        await runtime.redis.ping()
        settings = runtime.settings
        return {
            "mode": settings.redis_mode,
            "tls": settings.redis_uses_tls,
            "key_prefix": runtime.keys.prefix,
        }

    return await _timed(probe, "Redis")
