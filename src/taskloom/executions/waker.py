"""Brings waiting executions back (ADR 0008). On every worker, every WAKE_INTERVAL_SECONDS,
`WAKE_DUE` moves the executions whose time has come (a wait's end, an approval's timeout, a
deadline) from `waiting` to `queued` and resubmits them to the fair scheduler; on the upkeep
leader's tick, `WAKE_LOST` wakes those whose event (a decision, a child's end) was not followed
by a wake-up because a process died in between. PostgreSQL holds the times, so waits survive
worker and Redis restarts; rows are taken with SKIP LOCKED, so every worker may run this at
once."""

from __future__ import annotations

import uuid

import structlog

from taskloom.executions import state
from taskloom.executions.queue import ExecutionQueue
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")


async def _resubmit(runtime: Runtime, woken: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
    queue = ExecutionQueue(runtime)
    for org_id, execution_id in woken:
        # Its finished job is still there (kept an hour): resubmit drops it first. If Redis is
        # down the execution stays queued without a job, and the reconciler submits it.
        await queue.resubmit(execution_id=execution_id, org_id=org_id)
    if woken:
        log.info("executions_woken", count=len(woken))


async def wake_due(runtime: Runtime) -> None:
    """The executions due now, back to the queue."""
    await _resubmit(runtime, await state.wake_due(runtime.database))


async def wake_lost(runtime: Runtime) -> None:
    """The executions something already happened for, whose wake-up was lost."""
    await _resubmit(runtime, await state.wake_ready(runtime.database))


WAKE_DUE = Upkeep(
    name="wake_due",
    run=wake_due,
    leader_only=False,
    interval=lambda settings: settings.wake_interval_seconds,
)
WAKE_LOST = Upkeep(name="wake_lost", run=wake_lost)
