"""Brings waiting executions back (ADR 0008). Every WAKE_INTERVAL_SECONDS a worker moves the
executions whose time has come (a wait's end, an approval's timeout, a deadline) from `waiting`
to `queued` and resubmits them to the fair scheduler; at the reconciler's pace it also wakes
those whose event (a decision, a child's end) was not followed by a wake-up because a process
died in between. PostgreSQL holds the times, so waits survive worker and Redis restarts; rows
are taken with SKIP LOCKED, so every worker may run this at once."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from taskloom.executions import state
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")


async def wake_round(runtime: Runtime, *, events: bool = False) -> int:
    """One round: resubmit the executions due now (and, with `events`, those whose event's
    wake-up was lost). Returns how many were woken."""
    woken = await state.wake_due(runtime.database)
    if events:
        woken += await state.wake_ready(runtime.database)
    for org_id, execution_id in woken:
        # Its finished job is still there (kept an hour): resubmit drops it first. If Redis is
        # down the execution stays queued without a job, and the reconciler submits it.
        await runtime.queue.resubmit(execution_id=execution_id, org_id=org_id)
    if woken:
        log.info("executions_woken", count=len(woken))
    return len(woken)


async def run_forever(runtime: Runtime, stopping: asyncio.Event) -> None:
    """The worker's waker loop, until `stopping` is set."""
    settings = runtime.settings
    next_events = 0.0
    while not stopping.is_set():
        now = time.monotonic()
        events = now >= next_events
        if events:
            next_events = now + settings.reconcile_interval_seconds
        try:
            await wake_round(runtime, events=events)
        except asyncio.CancelledError:
            raise
        except Exception:  # PostgreSQL or Redis down: the next round tries again
            log.exception("wake_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), settings.wake_interval_seconds)
