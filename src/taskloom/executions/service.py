"""Executions (runs of a workflow), as the API sees them. Every query runs in the caller's
tenant transaction, so another organization's rows are simply not there (404)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.errors import Conflict, NotFound, TooManyQueued
from taskloom.executions import state
from taskloom.executions.models import (
    ApprovalStatus,
    ExecutionApproval,
    ExecutionStatus,
    ExecutionStep,
    ExecutionStepItem,
    StepStatus,
    WorkflowExecution,
)
from taskloom.executions.state import TERMINAL
from taskloom.pagination import decode_cursor, encode_cursor
from taskloom.workflows.models import Workflow
from taskloom.workflows.service import get_workflow

MAX_PAGE = 200
QUEUE_FULL_RETRY_AFTER_SECONDS = 5


async def _audit(
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    action: AuditAction,
    resource_type: str,
    resource_id: uuid.UUID,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=principal.current_org(),
        resource_type=resource_type,
        resource_id=resource_id,
    )


def _queued(org_id: uuid.UUID, max_queued: int) -> Any:
    """How many executions the organization has queued, counted up to `max_queued` only (a
    flooded organization costs at most that many index entries of `(org_id, status)`)."""
    waiting = (
        select(WorkflowExecution.id)
        .where(
            WorkflowExecution.org_id == org_id, WorkflowExecution.status == ExecutionStatus.QUEUED
        )
        .limit(max_queued)
        .subquery()
    )
    return select(func.count()).select_from(waiting).scalar_subquery()


def _check_queue_room(queued: int | None, max_queued: int) -> None:
    """TooManyQueued (429) when the organization already has `max_queued` executions queued.
    Requests racing at the limit may each pass: it may be exceeded by the number of that
    organization's calls in flight, never more."""
    if (queued or 0) >= max_queued:
        raise TooManyQueued(
            f"the organization already has {max_queued} executions queued; retry later",
            retry_after=QUEUE_FULL_RETRY_AFTER_SECONDS,
        )


async def start_execution(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    workflow_id: uuid.UUID,
    input: dict[str, Any],
    max_queued: int | None,
) -> WorkflowExecution:
    """A queued execution of the workflow's current definition, or TooManyQueued when its
    organization has `max_queued` waiting (None: the caller knows it is far below its limit,
    see `executions.queue.queue_limit`). The caller submits it to the queue after the commit (a
    job must never run ahead of its row)."""
    if max_queued is None:
        workflow = await get_workflow(db=db, workflow_id=workflow_id)
    else:  # the workflow and the organization's queued count in one round trip
        row = (
            await db.execute(
                select(Workflow, _queued(principal.current_org(), max_queued)).where(
                    Workflow.id == workflow_id
                )
            )
        ).first()
        if row is None:
            raise NotFound("workflow not found")
        workflow, queued = row
        _check_queue_room(queued, max_queued)
    execution = WorkflowExecution(
        org_id=workflow.org_id,
        workflow_id=workflow.id,
        workflow_version=workflow.version,
        definition=workflow.definition,
        triggered_by=principal.user_id,
        status=ExecutionStatus.QUEUED,
        input=input,
        request_id=context.request_id,
    )
    db.add(execution)
    await db.flush()
    # Not audited: the execution row is its own record (who, when, request id), and an audit
    # row per run would serialize every execution of an organization on its chain's lock.
    return execution


async def get_execution(
    *, db: AsyncSession, execution_id: uuid.UUID
) -> tuple[WorkflowExecution, list[ExecutionStep]]:
    execution = await db.get(WorkflowExecution, execution_id)
    if execution is None:
        raise NotFound("execution not found")
    steps = await db.execute(
        select(ExecutionStep)
        .where(ExecutionStep.execution_id == execution_id)
        .order_by(ExecutionStep.position)
    )
    return execution, list(steps.scalars())


async def items_progress(
    *, db: AsyncSession, execution: WorkflowExecution
) -> dict[str, dict[str, int]]:
    """For each for_each step of the execution: its items' counts by status, and `total`."""
    if not any(s.get("for_each") for s in (execution.definition or {}).get("steps", [])):
        return {}
    rows = await db.execute(
        select(ExecutionStepItem.step_id, ExecutionStepItem.status, func.count())
        .where(ExecutionStepItem.execution_id == execution.id)
        .group_by(ExecutionStepItem.step_id, ExecutionStepItem.status)
    )
    progress: dict[str, dict[str, int]] = {}
    for step_id, status, count in rows:
        counts = progress.setdefault(
            step_id, {"total": 0, "succeeded": 0, "failed": 0, "running": 0, "waiting": 0}
        )
        counts["total"] += count
        key = str(status) if status in counts else "running"  # pending: about to run again
        counts[key] += count
    return progress


CHILDREN_SHOWN = 100


async def list_children(
    *, db: AsyncSession, execution: WorkflowExecution, limit: int = CHILDREN_SHOWN
) -> list[WorkflowExecution]:
    """The sub-workflow executions the execution's `workflow` steps started (at most `limit`),
    by step and item."""
    if not any(s.get("type") == "workflow" for s in (execution.definition or {}).get("steps", [])):
        return []
    rows = await db.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.parent_execution_id == execution.id)
        .order_by(
            WorkflowExecution.parent_step_id,
            WorkflowExecution.parent_item_index.nulls_first(),
            WorkflowExecution.created_at,
        )
        .limit(limit)
    )
    return list(rows.scalars())


async def workflow_names(
    *, db: AsyncSession, execution_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The name of the workflow each execution runs."""
    if not execution_ids:
        return {}
    rows = await db.execute(
        select(WorkflowExecution.id, Workflow.name)
        .join(Workflow, Workflow.id == WorkflowExecution.workflow_id)
        .where(WorkflowExecution.id.in_(execution_ids))
    )
    return {row.id: row.name for row in rows}


async def list_executions(
    *,
    db: AsyncSession,
    principal: Principal,
    status: ExecutionStatus | None = None,
    workflow_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[WorkflowExecution], str | None]:
    """Newest first; `cursor` continues after the last item of the previous page."""
    query = select(WorkflowExecution).where(WorkflowExecution.org_id == principal.current_org())
    if status is not None:
        query = query.where(WorkflowExecution.status == status)
    if workflow_id is not None:
        query = query.where(WorkflowExecution.workflow_id == workflow_id)
    if since is not None:
        query = query.where(WorkflowExecution.created_at >= since)
    if until is not None:
        query = query.where(WorkflowExecution.created_at < until)
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(
            or_(
                WorkflowExecution.created_at < after_time,
                and_(WorkflowExecution.created_at == after_time, WorkflowExecution.id < after_id),
            )
        )
    limit = max(1, min(limit, MAX_PAGE))
    rows = await db.execute(
        query.order_by(WorkflowExecution.created_at.desc(), WorkflowExecution.id.desc()).limit(
            limit + 1
        )
    )
    items = list(rows.scalars())
    more = len(items) > limit
    items = items[:limit]
    return items, (encode_cursor(items[-1].created_at, items[-1].id) if more else None)


@dataclass(frozen=True)
class Cancellation:
    """A cancel's effects for the caller to apply after the commit: executions to withdraw from
    the queue (cancelled while queued or waiting: it and its descendants), and a parent to wake
    (a child ended: its step fails)."""

    execution: WorkflowExecution
    withdrawn: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)  # (org, id)
    wake: uuid.UUID | None = None


_DESCENDANTS = text(
    """
    with recursive tree(id) as (
        select id from workflow_executions where parent_execution_id = :root
        union all
        select e.id from workflow_executions e join tree on e.parent_execution_id = tree.id
    )
    select id from tree
    """
)


async def cancel_execution(
    *, db: AsyncSession, principal: Principal, context: AuditContext, execution_id: uuid.UUID
) -> Cancellation:
    """Queued or waiting ⇒ cancelled now; running ⇒ cancelled by its worker within moments
    (between steps, or while steps run: they are interrupted). Its sub-workflow executions,
    and theirs, are cancelled the same way. The caller applies the Cancellation after the
    commit (a worker that takes a withdrawn job first sees it cancelled)."""
    execution = await db.get(WorkflowExecution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound("execution not found")
    if execution.status in (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED):
        raise Conflict(f"the execution already {execution.status}")
    if execution.status == ExecutionStatus.CANCELLED:
        return Cancellation(execution)  # cancelling twice is not an error
    withdrawn = []
    now = _now()
    descendants = [row[0] for row in await db.execute(_DESCENDANTS, {"root": execution.id})]
    rows = await db.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.id.in_([execution.id, *descendants]))
        .order_by(WorkflowExecution.id)
        .with_for_update()
    )
    for each in rows.scalars():
        if each.status in TERMINAL:
            continue
        if each.status in (ExecutionStatus.QUEUED, ExecutionStatus.WAITING):
            each.status = ExecutionStatus.CANCELLED
            each.finished_at = now
            each.wake_at = None
            withdrawn.append((each.org_id, each.id))
        each.cancel_requested_at = now
    wake = None
    if execution.status == ExecutionStatus.CANCELLED and execution.parent_execution_id:
        await db.execute(
            select(WorkflowExecution.id)
            .where(WorkflowExecution.id == execution.parent_execution_id)
            .with_for_update()
        )
        if await state.wake(db, execution.parent_execution_id):
            wake = execution.parent_execution_id
    await db.flush()
    await db.refresh(execution)
    await _audit(db, principal, context, AuditAction.EXECUTION_CANCEL, "execution", execution.id)
    return Cancellation(execution, withdrawn, wake)


async def retry_execution(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    execution_id: uuid.UUID,
    max_queued: int | None,
) -> WorkflowExecution:
    """Queue a failed or cancelled execution again (TooManyQueued when its organization has
    `max_queued` waiting; None as for `start_execution`). Steps that succeeded keep their
    output and are not run again; the first unfinished step starts over. The caller resubmits
    it to the queue."""
    execution = await db.get(WorkflowExecution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound("execution not found")
    if execution.status not in (ExecutionStatus.FAILED, ExecutionStatus.CANCELLED):
        raise Conflict(
            f"only failed or cancelled executions can be retried, not {execution.status}"
        )
    if max_queued is not None:
        queued = await db.scalar(select(_queued(execution.org_id, max_queued)))
        _check_queue_room(queued, max_queued)
    execution.status = ExecutionStatus.QUEUED
    execution.error = None
    execution.output = None
    execution.finished_at = None
    execution.cancel_requested_at = None
    execution.wake_at = None
    # What did not succeed starts over: its steps and for-each items (a child or an approval
    # it waited for is asked again).
    for model in (ExecutionStep, ExecutionStepItem):
        await db.execute(
            update(model)
            .where(model.execution_id == execution_id, model.status != StepStatus.SUCCEEDED)
            .values(
                status=StepStatus.PENDING, finished_at=None, wake_at=None, child_execution_id=None
            )
        )
    await db.execute(
        delete(ExecutionApproval).where(
            ExecutionApproval.execution_id == execution_id,
            ExecutionApproval.status.in_([ApprovalStatus.PENDING, ApprovalStatus.TIMED_OUT]),
        )
    )
    await db.flush()
    await db.refresh(execution)
    await _audit(db, principal, context, AuditAction.EXECUTION_RETRY, "execution", execution.id)
    return execution


async def failed_executions(
    *, db: AsyncSession, principal: Principal, limit: int = 100
) -> list[WorkflowExecution]:
    rows = await db.execute(
        select(WorkflowExecution)
        .where(
            WorkflowExecution.org_id == principal.current_org(),
            WorkflowExecution.status == ExecutionStatus.FAILED,
        )
        .order_by(WorkflowExecution.finished_at.desc().nulls_last())
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    return list(rows.scalars())


def _now() -> datetime:
    return datetime.now(UTC)
