"""People's side of `approval` steps (ADR 0008): who may decide, the decision (audited), and
waking the execution that waited for it. The worker's side (asking, timeouts) is in
control.py. A waiting execution holds nothing; a decision moves it back to the queue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.errors import Conflict, Forbidden, NotFound
from taskloom.executions import state
from taskloom.executions.models import ApprovalStatus, ExecutionApproval, WorkflowExecution
from taskloom.orgs.models import Role


@dataclass(frozen=True)
class Decided:
    approval: ExecutionApproval
    execution: WorkflowExecution
    woken: bool  # the caller resubmits the execution after the commit


def may_decide(approval: ExecutionApproval, principal: Principal) -> bool:
    """Whether the principal is one of the approval's approvers: a member with the role named
    (or a higher one), or one of the users named (who must still be a member)."""
    if principal.user_id is None or principal.role is None:
        return False
    approvers = approval.approvers or {}
    if "users" in approvers:
        return str(principal.user_id) in {str(u) for u in approvers.get("users") or ()}
    return principal.has_role(Role(approvers.get("role", Role.OWNER)))


async def get_approval(
    *,
    db: AsyncSession,
    execution_id: uuid.UUID,
    step_id: str,
    item_index: int | None,
) -> ExecutionApproval:
    """The approval a step (or one of its for-each items) asked for, or NotFound."""
    approval = await db.scalar(
        select(ExecutionApproval).where(
            ExecutionApproval.execution_id == execution_id,
            ExecutionApproval.step_id == step_id,
            func.coalesce(ExecutionApproval.item_index, -1)
            == (item_index if item_index is not None else -1),
        )
    )
    if approval is None:
        raise NotFound("no approval was asked for at this step")
    return approval


async def find_approval(*, db: AsyncSession, approval_id: uuid.UUID) -> ExecutionApproval:
    """An approval by id (the link in `approval.requested`), or NotFound."""
    approval = await db.get(ExecutionApproval, approval_id)
    if approval is None:
        raise NotFound("approval not found")
    return approval


async def list_pending(*, db: AsyncSession, principal: Principal) -> list[ExecutionApproval]:
    """The organization's approvals that wait for a decision, oldest first (at most 200)."""
    rows = await db.execute(
        select(ExecutionApproval)
        .where(
            ExecutionApproval.org_id == principal.current_org(),
            ExecutionApproval.status == ApprovalStatus.PENDING,
        )
        .order_by(ExecutionApproval.requested_at)
        .limit(200)
    )
    return list(rows.scalars())


async def list_for_execution(
    *, db: AsyncSession, execution: WorkflowExecution
) -> list[ExecutionApproval]:
    """Every approval the execution asked for, in the order asked."""
    if not any(s.get("type") == "approval" for s in (execution.definition or {}).get("steps", [])):
        return []
    rows = await db.execute(
        select(ExecutionApproval)
        .where(ExecutionApproval.execution_id == execution.id)
        .order_by(ExecutionApproval.requested_at, ExecutionApproval.item_index)
    )
    return list(rows.scalars())


async def decide(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    execution_id: uuid.UUID,
    step_id: str,
    item_index: int | None,
    approve: bool,
    comment: str | None,
) -> Decided:
    """Approve or reject: Forbidden unless the principal is an approver, Conflict once
    decided (or timed out). The execution, if it waits, goes back to the queue."""
    execution = await db.get(WorkflowExecution, execution_id, with_for_update=True)
    if execution is None:
        raise NotFound("execution not found")
    approval = await get_approval(
        db=db, execution_id=execution_id, step_id=step_id, item_index=item_index
    )
    if not may_decide(approval, principal):
        raise Forbidden("you are not one of this approval's approvers")
    if approval.status != ApprovalStatus.PENDING:
        raise Conflict(f"this approval is already {approval.status.replace('_', ' ')}")
    if approval.timeout_at <= datetime.now(UTC):
        raise Conflict("this approval timed out")
    approval.status = ApprovalStatus.APPROVED if approve else ApprovalStatus.REJECTED
    approval.decided_by = principal.user_id
    approval.comment = comment
    approval.decided_at = datetime.now(UTC)
    woken = await state.wake(db, execution_id)
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.EXECUTION_APPROVE if approve else AuditAction.EXECUTION_REJECT,
        org_id=execution.org_id,
        resource_type="execution",
        resource_id=execution.id,
        details={"step_id": step_id, "item_index": item_index, "approval_id": str(approval.id)},
    )
    await db.refresh(execution)
    return Decided(approval=approval, execution=execution, woken=woken)
