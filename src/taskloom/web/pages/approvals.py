"""Approvals: the organization's pending ones, one approval's page (the link an
`approval.requested` webhook event carries) and the decision forms, also shown on the execution
page. The link identifies an approval and authorizes nothing: the page needs sign-in, and only
the approval's approvers see (and may post) Approve / Reject."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from taskloom.errors import BadRequest
from taskloom.executions import approvals, service
from taskloom.executions.models import ApprovalStatus, ExecutionApproval
from taskloom.executions.queue import enqueue_after_commit
from taskloom.executions.schemas import COMMENT_MAX_LENGTH
from taskloom.orgs import service as orgs
from taskloom.orgs.models import Role
from taskloom.web.errors import UiRoute
from taskloom.web.forms import optional_text, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in
from taskloom.workflows import service as workflow_service

router = APIRouter(prefix="/ui/approvals", route_class=UiRoute, include_in_schema=False)


@dataclass(frozen=True)
class ApprovalView:
    """An approval as a page shows it: who may decide it (in words), who decided, and whether
    this person sees the decision form."""

    approval: ExecutionApproval
    approvers: str
    decided_by: str | None
    open: bool  # pending and not yet past its timeout
    may_decide: bool  # open, and this person is one of its approvers


async def approval_views(page: Page, asked: Sequence[ExecutionApproval]) -> list[ApprovalView]:
    """The approvals with their approvers' and deciders' names (the organization's members;
    someone who left is "a former member")."""
    if not asked:
        return []
    names = {
        m.user_id: m.display_name or m.email
        for m in await orgs.list_members(db=page.db, principal=page.principal)
    }
    now = datetime.now(UTC)
    views = []
    for approval in asked:
        is_open = approval.status == ApprovalStatus.PENDING and approval.timeout_at > now
        views.append(
            ApprovalView(
                approval=approval,
                approvers=_approvers(approval, names),
                decided_by=_name(approval.decided_by, names) if approval.decided_by else None,
                open=is_open,
                may_decide=is_open and approvals.may_decide(approval, page.principal),
            )
        )
    return views


def _name(user_id: uuid.UUID | str, names: dict[uuid.UUID, str]) -> str:
    try:
        return names.get(uuid.UUID(str(user_id)), "a former member")
    except ValueError:
        return "a former member"


def _approvers(approval: ExecutionApproval, names: dict[uuid.UUID, str]) -> str:
    configured = approval.approvers or {}
    if "users" in configured:
        people = [_name(u, names) for u in configured.get("users") or ()]
        return ", ".join(people) or "nobody"
    role = configured.get("role", Role.OWNER.value)
    return "owners" if role == Role.OWNER.value else f"{role}s and higher roles"


@router.get("")
async def list_approvals(request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        pending = await approvals.list_pending(db=page.db, principal=page.principal)
        return render(
            page,
            "approvals/list.html",
            title="Approvals",
            approvals=await approval_views(page, pending),
            workflow_names=await service.workflow_names(
                db=page.db, execution_ids={a.execution_id for a in pending}
            ),
        )


@router.get("/{approval_id}")
async def show_approval(approval_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        approval = await approvals.find_approval(db=page.db, approval_id=approval_id)
        execution, _ = await service.get_execution(db=page.db, execution_id=approval.execution_id)
        workflow = await workflow_service.get_workflow(
            db=page.db, workflow_id=execution.workflow_id
        )
        [view] = await approval_views(page, [approval])
        return render(
            page,
            "approvals/detail.html",
            title=f"Approval in {workflow.name}",
            view=view,
            execution=execution,
            workflow=workflow,
            comment_max=COMMENT_MAX_LENGTH,
        )


async def _decide(approval_id: uuid.UUID, request: Request, *, approve: bool) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.VIEWER)
        comment = optional_text(form, "comment")
        if comment is not None and len(comment) > COMMENT_MAX_LENGTH:
            raise BadRequest(f"the comment may be {COMMENT_MAX_LENGTH} characters long at most")
        approval = await approvals.find_approval(db=page.db, approval_id=approval_id)
        decided = await approvals.decide(
            db=page.db,
            principal=page.principal,
            context=page.audit,
            execution_id=approval.execution_id,
            step_id=approval.step_id,
            item_index=approval.item_index,
            approve=approve,
            comment=comment,
        )
        if decided.woken:
            enqueue_after_commit(page.signed_in, decided.execution, replace=True)
    notice = "approval-approved" if approve else "approval-rejected"
    # Back where the form was (a key, never a URL taken from the form: no open redirect).
    if text(form, "return_to") == "execution":
        return redirect(f"/ui/executions/{approval.execution_id}?notice={notice}")
    return redirect(f"/ui/approvals/{approval_id}?notice={notice}")


@router.post("/{approval_id}/approve")
async def approve(approval_id: uuid.UUID, request: Request) -> Response:
    return await _decide(approval_id, request, approve=True)


@router.post("/{approval_id}/reject")
async def reject(approval_id: uuid.UUID, request: Request) -> Response:
    return await _decide(approval_id, request, approve=False)
