"""The worker's side of the steps that wait (ADR 0008): a `wait` until its time, an `approval`
until someone decides (or its timeout), a `workflow` step until its child execution ends. Each
runs again from its row whenever its execution is resumed, so every function here is
idempotent: it finds what an earlier run already asked for (the approval, the child) and
reports how things stand. People decide approvals through executions/approvals.py."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert

from taskloom.config import Settings
from taskloom.db.engine import Database
from taskloom.db.tenancy import tenant_transaction
from taskloom.executions import state
from taskloom.executions.models import (
    ApprovalStatus,
    ExecutionApproval,
    ExecutionStatus,
    WorkflowExecution,
)
from taskloom.executions.state import TERMINAL, Run
from taskloom.executions.steps import StepError
from taskloom.workflows.durations import parse_duration
from taskloom.workflows.models import Workflow

MAX_DEPTH = 5  # children of children, and so on: a root is depth 0


@dataclass(frozen=True)
class Waiting:
    """Not yet: look again at `wake_at` (None: when an event wakes the execution)."""

    wake_at: datetime | None


@dataclass(frozen=True)
class Done:
    output: Any


def wait_until(args: dict[str, Any]) -> datetime:
    """When a `wait` step that starts now ends: its `until`, or `for` from now."""
    if args.get("until"):
        until = datetime.fromisoformat(str(args["until"]).replace("Z", "+00:00"))
        return until if until.tzinfo else until.replace(tzinfo=UTC)
    return datetime.now(UTC) + parse_duration(str(args["for"]))


# --- approvals -----------------------------------------------------------------------------------


async def approval(
    database: Database,
    settings: Settings,
    run: Run,
    *,
    step_id: str,
    item_index: int | None,
    args: dict[str, Any],
) -> Waiting | Done:
    """Ask for the approval (once: the first run inserts it and emits `approval.requested`),
    then report its decision, its timeout's outcome, or that it still waits."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        timeout = parse_duration(str(args.get("timeout") or "24h"))
        asked = await db.execute(
            insert(ExecutionApproval)
            .values(
                org_id=run.org_id,
                execution_id=run.execution_id,
                step_id=step_id,
                item_index=item_index,
                approvers=args["approvers"],
                message=str(args.get("message") or ""),
                status=ApprovalStatus.PENDING,
                timeout_at=func.now() + timeout,
            )
            .on_conflict_do_nothing()
            .returning(ExecutionApproval.id, ExecutionApproval.message)
        )
        if (new := asked.first()) is not None:
            await db.execute(
                text("select taskloom_webhook_event(:org, 'approval.requested', :data)"),
                {"org": run.org_id, "data": _requested(settings, run, new.id, step_id, item_index)},
            )
        row = (
            await db.execute(
                select(ExecutionApproval).where(
                    ExecutionApproval.execution_id == run.execution_id,
                    ExecutionApproval.step_id == step_id,
                    func.coalesce(ExecutionApproval.item_index, -1)
                    == (item_index if item_index is not None else -1),
                )
            )
        ).scalar_one()
        on_timeout = args.get("on_timeout") or "reject"
        if row.status == ApprovalStatus.PENDING and row.timeout_at <= datetime.now(UTC):
            row.status = ApprovalStatus.TIMED_OUT
            row.decided_at = func.now()
            await db.flush()
            await db.refresh(row)
        elif row.status == ApprovalStatus.PENDING:
            return Waiting(row.timeout_at)
        decided = _decision(
            row,
            approved=row.status == ApprovalStatus.APPROVED
            or (row.status == ApprovalStatus.TIMED_OUT and on_timeout == "approve"),
        )
    # Raised once the timeout is committed (inside the transaction it would be rolled back).
    if row.status == ApprovalStatus.TIMED_OUT and on_timeout == "fail":
        raise StepError(
            f"nobody decided within {args.get('timeout') or '24h'}", code="approval_timed_out"
        )
    return Done(decided)


def _decision(row: ExecutionApproval, *, approved: bool) -> dict[str, Any]:
    return {
        "approved": approved,
        "by": str(row.decided_by) if row.decided_by else None,
        "comment": row.comment,
        "at": row.decided_at.isoformat() if row.decided_at else None,
        "timed_out": row.status == ApprovalStatus.TIMED_OUT,
    }


def _requested(
    settings: Settings, run: Run, approval_id: uuid.UUID, step_id: str, item_index: int | None
) -> str:
    """The event's data (JSON text): where to decide. The link identifies the approval; it does
    not authorize anything (the page asks for sign-in and the approver's rights)."""
    base = settings.public_url.rstrip("/") if settings.public_url else ""
    return json.dumps(
        {
            "approval_id": str(approval_id),
            "execution_id": str(run.execution_id),
            "step_id": step_id,
            "item_index": item_index,
            "url": f"{base}/ui/approvals/{approval_id}",
        }
    )


# --- child executions ----------------------------------------------------------------------------


async def child(
    database: Database,
    settings: Settings,
    run: Run,
    *,
    step_id: str,
    item_index: int | None,
    existing: uuid.UUID | None,
    workflow_id: uuid.UUID,
    input: dict[str, Any],
) -> tuple[Waiting | Done, uuid.UUID | None]:
    """Start the child execution (once), or report how the one started earlier ended:
    (Done(its output) | Waiting, id of a child just created, to be submitted to the queue)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        if existing is not None:
            found = await db.execute(
                select(
                    WorkflowExecution.status, WorkflowExecution.output, WorkflowExecution.error
                ).where(WorkflowExecution.id == existing)
            )
            row = found.first()
            if row is None:
                raise StepError("the child execution was deleted", code="child_missing")
            status, output, error = row
            if status == ExecutionStatus.SUCCEEDED:
                return Done(output), None
            if status in TERMINAL:
                code = (error or {}).get("code") if status == ExecutionStatus.FAILED else None
                raise StepError(
                    f"the child execution {status}" + (f" ({code})" if code else ""),
                    code=f"child_{status}",
                    details={"child_execution_id": str(existing)},
                )
            return Waiting(None), None
        if run.depth + 1 > MAX_DEPTH:
            raise StepError(
                f"sub-workflows may nest {MAX_DEPTH} deep at most", code="depth_exceeded"
            )
        root = run.root_execution_id or run.execution_id
        descendants = await db.scalar(
            select(func.count())
            .select_from(WorkflowExecution)
            .where(WorkflowExecution.root_execution_id == root)
        )
        if (descendants or 0) >= settings.max_descendant_executions:
            raise StepError(
                f"the execution started {settings.max_descendant_executions} sub-workflow "
                "executions already",
                code="too_many_descendants",
            )
        workflow = await db.get(Workflow, workflow_id)
        if workflow is None:
            raise StepError("the child workflow does not exist", code="child_workflow_missing")
        execution = WorkflowExecution(
            org_id=run.org_id,
            workflow_id=workflow.id,
            workflow_version=workflow.version,
            definition=workflow.definition,
            triggered_by=run.triggered_by,
            status=ExecutionStatus.QUEUED,
            input=input,
            parent_execution_id=run.execution_id,
            parent_step_id=step_id,
            parent_item_index=item_index,
            root_execution_id=root,
            depth=run.depth + 1,
        )
        db.add(execution)
        await db.flush()
        await state.mark_waiting(
            database,
            run,
            step_id=step_id,
            item_index=item_index,
            wake_at=None,
            child_execution_id=execution.id,
            db=db,
        )
        return Waiting(None), execution.id
