"""Event triggers: a workflow starts when another workflow of its organization ends with one of
the statuses it listens to. The transaction that ends the watched execution writes one `pending`
delivery per listening trigger (the outbox trigger of migration 0015), so no end is lost
between a commit and a worker; on every worker, every WAKE_INTERVAL_SECONDS, `EVENT_TRIGGERS`
turns pending deliveries into executions, each in the transaction that marks its delivery
`accepted` (or `rejected`, with the reason): one execution per end, however many workers look.

A chain of event-started executions stops at MAX_CHAIN (two workflows that trigger each other
run MAX_CHAIN times, then the next delivery is rejected), since every execution carries how
many event triggers led to it (`trigger_depth`); and all the executions one outside start
causes, through sub-workflows and event triggers together (many triggers may listen to one
workflow), are at most MAX_DESCENDANT_EXECUTIONS: event-started executions share their chain's
`root_execution_id`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.errors import DomainError
from taskloom.executions.models import WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.service import Origin, StartKind, start_execution
from taskloom.observability.metrics import TRIGGERS
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime
from taskloom.triggers.models import DeliveryStatus, TriggerDelivery, WorkflowTrigger

log = structlog.get_logger("taskloom.triggers")

MAX_CHAIN = 5  # event-started executions in a row; an API, schedule or webhook start is 0
BATCH = 100  # deliveries of one organization per transaction
ORGS_PER_ROUND = 50


@dataclass
class _Handled:
    started: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (org, execution)
    rejected: int = 0


async def _orgs_with_pending(runtime: Runtime) -> list[uuid.UUID]:
    """Organizations with pending deliveries, oldest first. The privileged role, because this
    looks across organizations; it reads only their ids (the deliveries are then handled in
    each organization's own tenant transaction)."""
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            text(
                "select org_id from trigger_deliveries where status = 'pending' "
                "group by org_id order by min(created_at) limit :limit"
            ),
            {"limit": ORGS_PER_ROUND},
        )
        return [org_id for (org_id,) in rows]


async def _caused(db: AsyncSession, root: uuid.UUID) -> int:
    """Executions the chain's first start has caused so far: sub-workflows and event starts."""
    count = await db.scalar(
        select(func.count())
        .select_from(WorkflowExecution)
        .where(WorkflowExecution.root_execution_id == root)
    )
    return int(count or 0)


async def _handle(
    db: AsyncSession, runtime: Runtime, delivery: TriggerDelivery, handled: _Handled
) -> None:
    """Start the delivery's execution, or reject it with the reason, in the caller's transaction
    (a savepoint around the start: a refused start leaves the delivery to be marked)."""
    trigger = await db.get(WorkflowTrigger, delivery.trigger_id)
    source = await db.get(WorkflowExecution, delivery.source_execution_id)
    reason: str | None = None
    if trigger is None or source is None:
        reason = "the trigger or the execution that ended is gone"
    elif source.trigger_depth + 1 > MAX_CHAIN:
        reason = f"an event chain stops after {MAX_CHAIN} executions (loop protection)"
    elif (caused := await _caused(db, root := source.root_execution_id or source.id)) >= (
        limit := runtime.settings.max_descendant_executions
    ):
        reason = f"the start of this chain already caused {caused} executions (at most {limit})"
    else:
        try:
            async with db.begin_nested():
                started = await start_execution(
                    db=db,
                    org_id=delivery.org_id,
                    workflow_id=trigger.workflow_id,
                    input={
                        "execution_id": str(source.id),
                        "workflow_id": str(source.workflow_id),
                        "status": source.status,
                        "output": source.output,
                        "error": source.error,
                    },
                    max_queued=runtime.settings.max_queued_per_org,
                    origin=Origin(
                        kind=StartKind.EVENT,
                        trigger_id=trigger.id,
                        depth=source.trigger_depth + 1,
                        root_execution_id=root,
                    ),
                )
        except DomainError as refused:  # disabled, input_schema, queue full
            reason = f"{refused.code}: {refused}"
        else:
            delivery.execution_id = started.execution.id
            handled.started.append((delivery.org_id, started.execution.id))
    if reason is not None:
        delivery.status, delivery.reason = DeliveryStatus.REJECTED, reason
        handled.rejected += 1
    else:
        delivery.status = DeliveryStatus.ACCEPTED


async def _drain_org(runtime: Runtime, org_id: uuid.UUID, handled: _Handled) -> None:
    async with tenant_transaction(runtime.database, org_id=org_id, user_id=None) as db:
        pending = (
            await db.execute(
                select(TriggerDelivery)
                .where(
                    TriggerDelivery.org_id == org_id,
                    TriggerDelivery.status == DeliveryStatus.PENDING,
                )
                .order_by(TriggerDelivery.created_at)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        for delivery in list(pending):
            await _handle(db, runtime, delivery, handled)


async def drain(runtime: Runtime) -> None:
    """Turn pending event deliveries into executions, then submit them (after the commit: a job
    never runs ahead of its row; if this process dies in between, the reconciler submits
    them)."""
    queue = ExecutionQueue(runtime)
    for org_id in await _orgs_with_pending(runtime):
        handled = _Handled()
        await _drain_org(runtime, org_id, handled)
        for org, execution_id in handled.started:
            await queue.submit(execution_id=execution_id, org_id=org)
        if handled.started:
            TRIGGERS.labels("event", "started").inc(len(handled.started))
        if handled.rejected:
            TRIGGERS.labels("event", "rejected").inc(handled.rejected)
            log.info("event_triggers_rejected", org_id=str(org_id), count=handled.rejected)


EVENT_TRIGGERS = Upkeep(
    name="event_triggers",
    run=drain,
    leader_only=False,
    interval=lambda settings: settings.wake_interval_seconds,
)
