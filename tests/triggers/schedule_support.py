"""Helpers of the schedule tests: create one through the API, read its ticks and executions as
PostgreSQL holds them (the privileged role: no tenant filter between the test and the truth),
move its next tick, and leave no schedule behind for later tests' workers to fire."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx
from sqlalchemy import delete, func, select, update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import WorkflowExecution
from taskloom.runtime import Runtime
from taskloom.triggers.models import ScheduleTick, WorkflowSchedule
from tests.factories import Account

T = TypeVar("T")


async def create_schedule(
    api: httpx.AsyncClient, account: Account, workflow_id: str, **body: Any
) -> uuid.UUID:
    created = await api.post(
        f"/api/workflows/{workflow_id}/schedules", json=body, headers=account.headers
    )
    assert created.status_code == 201, created.text
    return uuid.UUID(created.json()["id"])


async def pause(api: httpx.AsyncClient, account: Account, schedule_id: uuid.UUID) -> None:
    paused = await api.patch(
        f"/api/schedules/{schedule_id}", json={"enabled": False}, headers=account.headers
    )
    assert paused.status_code == 200, paused.text


async def ticks_of(runtime: Runtime, schedule_id: uuid.UUID) -> list[ScheduleTick]:
    """The schedule's ticks, oldest first."""
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(ScheduleTick)
            .where(ScheduleTick.schedule_id == schedule_id)
            .order_by(ScheduleTick.tick_at)
        )
        return list(rows.scalars())


async def executions_of(runtime: Runtime, schedule_id: uuid.UUID) -> list[WorkflowExecution]:
    """The executions the schedule started, oldest first."""
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(WorkflowExecution)
            .where(WorkflowExecution.trigger_id == schedule_id)
            .order_by(WorkflowExecution.created_at)
        )
        return list(rows.scalars())


async def schedule_row(runtime: Runtime, schedule_id: uuid.UUID) -> WorkflowSchedule:
    async with system_transaction(runtime.database) as db:
        found = await db.get(WorkflowSchedule, schedule_id)
        assert found is not None
        return found


async def set_schedule(runtime: Runtime, schedule_id: uuid.UUID, **values: Any) -> None:
    async with system_transaction(runtime.database) as db:
        await db.execute(
            update(WorkflowSchedule).where(WorkflowSchedule.id == schedule_id).values(**values)
        )


async def database_now(runtime: Runtime) -> datetime:
    async with system_transaction(runtime.database) as db:
        now: datetime = (await db.execute(select(func.clock_timestamp()))).scalar_one()
        return now


async def delete_all_schedules(runtime: Runtime) -> None:
    """No schedule outlives its test: a later test's workers would fire it."""
    async with system_transaction(runtime.database) as db:
        await db.execute(delete(WorkflowSchedule))


async def eventually(check: Callable[[], Awaitable[T | None]], *, within: float, what: str) -> T:
    """Poll `check` until it returns something (not None), for at most `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s")
        await asyncio.sleep(0.2)
