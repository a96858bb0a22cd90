"""Re-runs: a new execution of a finished one's input, linked to it (`retry_of`), on the
definition it ran (`original`) or the workflow's current one (`current`), from a step.

The steps upstream of `from_step` (what it needs, directly or not) keep the results the old
execution recorded: their rows, and a for_each step's items, are copied into the new execution
before it is queued, marked `reused`, with no attempt counted. Everything else runs again on a
worker through the usual path: `from_step`, what comes after it, and any branch that is not
upstream of it. The worker's claim reads the copied rows as settled steps (migration 0022),
so templates read `steps.<kept>.output` as in the old execution. Without `from_step`, nothing
is kept: the whole definition runs again on the same input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.errors import Conflict, NotFound, ValidationFailed
from taskloom.executions.models import (
    ExecutionStep,
    ExecutionStepItem,
    StepStatus,
    WorkflowExecution,
)
from taskloom.executions.service import (
    Origin,
    StartKind,
    check_input,
    check_queue_room,
    queued_count,
    queued_execution,
)
from taskloom.executions.state import TERMINAL
from taskloom.workflows.graph import Graph
from taskloom.workflows.models import Workflow

# A kept step's recorded result is reused as it was: a success, or a skip (by `when` or its
# join) that the steps after it were planned with. A failure, or a step that never finished,
# has nothing to keep: re-run from it (or from earlier).
REUSABLE = frozenset({StepStatus.SUCCEEDED, StepStatus.SKIPPED})
RERUNS_SHOWN = 100


class Definition(StrEnum):
    ORIGINAL = "original"  # the definition the old execution ran (its snapshot)
    CURRENT = "current"  # the workflow's definition now


@dataclass(frozen=True)
class Rerun:
    """What a re-run is asked to do."""

    definition: Definition = Definition.ORIGINAL
    from_step: str | None = None


async def rerun_execution(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    execution_id: uuid.UUID,
    rerun: Rerun,
    max_queued: int | None,
) -> WorkflowExecution:
    """A new queued execution re-running the finished execution `execution_id` (unchanged),
    in the caller's tenant transaction. Conflict when it has not finished or the workflow is
    disabled; ValidationFailed for a step the definition does not have, kept steps the current
    definition no longer has upstream of `from_step`, kept steps with no result to reuse, or
    an input the current definition's `input_schema` refuses; TooManyQueued as for any start.
    The caller submits it to the queue after the commit."""
    # Shared lock: a purge or a plain retry cannot change it while its rows are copied.
    old = await db.get(WorkflowExecution, execution_id, with_for_update={"read": True})
    if old is None:
        raise NotFound("execution not found")
    if old.status not in TERMINAL:
        raise Conflict(
            f"only a finished execution can be re-run, not a {old.status} one; "
            "wait for it to end or cancel it",
            code="execution_not_finished",
        )
    workflow = await db.get(Workflow, old.workflow_id)
    if workflow is None:
        raise NotFound("workflow not found")
    if not workflow.enabled:
        raise Conflict("the workflow is disabled; enable it to start it", code="workflow_disabled")
    if rerun.definition is Definition.CURRENT:
        definition, version = workflow.definition, workflow.version
        check_input(definition, old.input)
    else:
        definition, version = old.definition, old.workflow_version
    graph = Graph.of(definition)
    kept = _kept(Graph.of(old.definition), graph, rerun)
    steps, items = await _recorded(db, old.id, kept)
    if max_queued is not None:
        check_queue_room(await db.scalar(select(queued_count(old.org_id, max_queued))), max_queued)

    origin = Origin(kind=StartKind.RETRY, user_id=principal.user_id, request_id=context.request_id)
    execution = queued_execution(
        uuid.uuid4(), old.org_id, old.workflow_id, version, old.input, origin
    )
    execution.definition = definition
    execution.retry_of = old.id
    db.add(execution)
    await db.flush()  # the execution's row before its steps' (their foreign key)
    db.add_all([_copy_step(step, execution, graph) for step in steps])
    db.add_all([_copy_item(item, execution) for item in items])
    await db.flush()
    await db.refresh(execution)
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.EXECUTION_RETRY,
        org_id=old.org_id,
        resource_type="execution",
        resource_id=old.id,
        details={
            "rerun_execution_id": str(execution.id),
            "definition": str(rerun.definition),
            "workflow_version": version,
            "from_step": rerun.from_step,
            "reused_steps": sorted(kept),
        },
    )
    return execution


def _kept(old: Graph, chosen: Graph, rerun: Rerun) -> frozenset[str]:
    """The steps whose recorded results the re-run keeps: those upstream of `from_step` in the
    old execution's definition, each still upstream of it in the chosen one."""
    step = rerun.from_step
    if step is None:
        return frozenset()
    if step not in chosen.steps or step not in old.steps:
        where = "the execution's definition" if step not in old.steps else "the current one"
        raise ValidationFailed(
            f"from_step {step!r} is not a step of {where}",
            code="unknown_step",
            details={"from_step": step},
        )
    kept = old.upstream(step)
    missing = sorted(kept - chosen.upstream(step), key=old.order.index)
    if missing:
        raise ValidationFailed(
            f"the current definition no longer has {', '.join(missing)} upstream of "
            f"{step!r}; their recorded outputs cannot be kept: re-run on the original "
            "definition, or from an earlier step",
            code="kept_steps_missing",
            details={"missing": missing},
        )
    return kept


async def _recorded(
    db: AsyncSession, execution_id: uuid.UUID, kept: frozenset[str]
) -> tuple[list[ExecutionStep], list[ExecutionStepItem]]:
    """The old execution's rows of the kept steps (and of their for_each items);
    ValidationFailed naming the kept steps with no result to reuse."""
    if not kept:
        return [], []
    steps = list(
        (
            await db.execute(
                select(ExecutionStep).where(
                    ExecutionStep.execution_id == execution_id, ExecutionStep.step_id.in_(kept)
                )
            )
        ).scalars()
    )
    reusable = {s.step_id for s in steps if s.status in REUSABLE}
    unfinished = sorted(kept - reusable)
    if unfinished:
        raise ValidationFailed(
            f"{', '.join(unfinished)} did not succeed in the execution: there is no output to "
            "keep; re-run from the first of them",
            code="kept_steps_unfinished",
            details={"unfinished": unfinished},
        )
    items = list(
        (
            await db.execute(
                select(ExecutionStepItem).where(
                    ExecutionStepItem.execution_id == execution_id,
                    ExecutionStepItem.step_id.in_(kept),
                )
            )
        ).scalars()
    )
    return steps, items


def _columns(row: ExecutionStep | ExecutionStepItem, execution: WorkflowExecution) -> Any:
    """The row's recorded result in the new execution: reused, no attempt of its own."""
    return {
        "org_id": execution.org_id,
        "execution_id": execution.id,
        "step_id": row.step_id,
        "status": row.status,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "attempts": 0,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "child_execution_id": row.child_execution_id,
        "reused": True,
    }


def _copy_step(row: ExecutionStep, execution: WorkflowExecution, graph: Graph) -> ExecutionStep:
    """A kept step's row in the new execution, at its place in the chosen definition."""
    return ExecutionStep(
        **_columns(row, execution),
        position=graph.order.index(row.step_id),
        type=str(graph.steps[row.step_id]["type"]),
    )


def _copy_item(row: ExecutionStepItem, execution: WorkflowExecution) -> ExecutionStepItem:
    """A kept for_each step's item in the new execution."""
    return ExecutionStepItem(**_columns(row, execution), item_index=row.item_index)


async def list_reruns(
    *, db: AsyncSession, execution: WorkflowExecution, limit: int = RERUNS_SHOWN
) -> list[WorkflowExecution]:
    """The re-runs of the execution (at most `limit`), oldest first."""
    rows = await db.execute(
        select(WorkflowExecution)
        .where(WorkflowExecution.retry_of == execution.id)
        .order_by(WorkflowExecution.created_at)
        .limit(limit)
    )
    return list(rows.scalars())
