"""Execution retention (EXECUTION_RETENTION_DAYS): finished executions (succeeded, failed,
cancelled) whose `finished_at` is older than the retention are deleted in batches, with their
steps and their events' webhook deliveries; their `ai_usage` rows are first summed per day into
`ai_usage_daily` (ai/rollup.py). Queued and running executions are never touched, however old.

The executions' upkeep (`UPKEEP`, on the one worker leading the upkeep, queue/upkeep.py) purges
a few batches per tick; `taskloom purge` runs it to the end now, and `--dry-run` counts what
would go. Privileged transactions, one per batch: the purge works across organizations, and a
batch's rows are locked with SKIP LOCKED so it never waits on (or for) anything else."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.ai.rollup import roll_up
from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import (
    ExecutionStatus,
    ExecutionStep,
    IdempotencyKey,
    WorkflowExecution,
)
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime
from taskloom.webhooks.retention import purge_deliveries

log = structlog.get_logger("taskloom.queue")

BATCH = 500
# Time an upkeep tick may spend deleting, BATCH per transaction: enough to keep up with about
# 1,000 executions/s at the default 30 s tick (a batch of 500 takes about 0.1 s; docs/SCALING.md
# "Capacity plan"), while a backlog (a first run, a shortened retention) drains over several
# ticks instead of holding the leader for long.
SECONDS_PER_TICK = 5.0
TERMINAL = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)


@dataclass
class PurgeReport:
    """Rows deleted (or, in a dry run, that would be) per table; `ai_usage_daily` counts the
    daily sums written or added to (0 in a dry run)."""

    workflow_executions: int = 0
    execution_steps: int = 0
    webhook_deliveries: int = 0
    ai_usage: int = 0
    ai_usage_daily: int = 0

    def add(self, other: PurgeReport) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)

    def counts(self) -> dict[str, int]:
        return asdict(self)

    @property
    def empty(self) -> bool:
        return not any(asdict(self).values())


def retention_cutoff(runtime: Runtime, now: datetime | None = None) -> datetime:
    """Executions that finished before this go."""
    days = runtime.settings.execution_retention_days
    return (now or datetime.now(UTC)) - timedelta(days=days)


async def _expired(
    db: AsyncSession, *, cutoff: datetime, after: tuple[datetime, uuid.UUID] | None, lock: bool
) -> list[tuple[datetime, uuid.UUID]]:
    """The next batch of expired executions, oldest first (ix_workflow_executions_finished_
    terminal), after `after` (a dry run pages; a purge deletes what it read)."""
    query = (
        select(WorkflowExecution.finished_at, WorkflowExecution.id)
        .where(
            WorkflowExecution.status.in_([s.value for s in TERMINAL]),
            WorkflowExecution.finished_at < cutoff,
        )
        .order_by(WorkflowExecution.finished_at, WorkflowExecution.id)
        .limit(BATCH)
    )
    if after is not None:
        query = query.where(tuple_(WorkflowExecution.finished_at, WorkflowExecution.id) > after)
    if lock:
        query = query.with_for_update(skip_locked=True)
    return [(row.finished_at, row.id) for row in await db.execute(query)]


async def _batch(
    db: AsyncSession, *, ids: list[uuid.UUID], cutoff: datetime, first: bool, dry_run: bool
) -> PurgeReport:
    # Calls of no execution (their workflow was deleted) go BATCH at a time with each batch; a
    # dry run counts them all once.
    orphans = (None if first else 0) if dry_run else BATCH
    usage = await roll_up(db, execution_ids=ids, cutoff=cutoff, orphans=orphans, dry_run=dry_run)
    report = PurgeReport(
        ai_usage=usage.calls,
        ai_usage_daily=0 if dry_run else usage.daily_rows,
        webhook_deliveries=await purge_deliveries(db, execution_ids=ids, dry_run=dry_run),
        workflow_executions=len(ids),
    )
    steps = ExecutionStep.execution_id.in_(ids)
    if dry_run:
        report.execution_steps = int(
            (await db.execute(select(func.count()).where(steps))).scalar_one()
        )
    else:
        deleted = await db.execute(delete(ExecutionStep).where(steps))
        report.execution_steps = int(getattr(deleted, "rowcount", 0) or 0)
        await db.execute(delete(WorkflowExecution).where(WorkflowExecution.id.in_(ids)))
    return report


async def purge_expired_executions(
    runtime: Runtime,
    *,
    dry_run: bool = False,
    max_batches: int | None = None,
    seconds: float | None = None,
    now: datetime | None = None,
) -> PurgeReport:
    """Purge (or count) executions past the retention, BATCH per transaction, until none is
    left, `max_batches` were done, or `seconds` have passed (checked between batches)."""
    cutoff = retention_cutoff(runtime, now)
    total = PurgeReport()
    after: tuple[datetime, uuid.UUID] | None = None
    done = 0
    until = None if seconds is None else time.monotonic() + seconds
    while (max_batches is None or done < max_batches) and (
        until is None or time.monotonic() < until
    ):
        async with system_transaction(runtime.database) as db:
            rows = await _expired(db, cutoff=cutoff, after=after, lock=not dry_run)
            ids = [execution_id for _, execution_id in rows]
            report = await _batch(db, ids=ids, cutoff=cutoff, first=done == 0, dry_run=dry_run)
        total.add(report)
        done += 1
        if dry_run and rows:
            after = rows[-1]
        if len(rows) < BATCH and (dry_run or report.ai_usage < BATCH):
            break  # the last batch was not full: nothing is left
    return total


async def purge_expired_keys(runtime: Runtime, *, seconds: float = SECONDS_PER_TICK) -> int:
    """Delete idempotency keys older than IDEMPOTENCY_TTL_SECONDS (a start with one takes it
    over anyway: this only keeps the table small), BATCH per transaction, until none is left or
    `seconds` have passed."""
    ttl = timedelta(seconds=runtime.settings.idempotency_ttl_seconds)
    until, total = time.monotonic() + seconds, 0
    while True:
        async with system_transaction(runtime.database) as db:
            expired = (
                select(IdempotencyKey.id)
                .where(IdempotencyKey.created_at < func.now() - ttl)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
            deleted = await db.execute(delete(IdempotencyKey).where(IdempotencyKey.id.in_(expired)))
            count = int(getattr(deleted, "rowcount", 0) or 0)
        total += count
        if count < BATCH or time.monotonic() >= until:
            return total


async def purge_some(runtime: Runtime) -> None:
    """The upkeep's tick: expired executions and idempotency keys, each for up to
    SECONDS_PER_TICK, logged when any went."""
    expired = await purge_expired_executions(runtime, seconds=SECONDS_PER_TICK)
    if not expired.empty:
        log.info("expired_executions_purged", **expired.counts())
    if keys := await purge_expired_keys(runtime):
        log.info("expired_idempotency_keys_purged", count=keys)


UPKEEP = Upkeep(name="execution_retention", run=purge_some)
