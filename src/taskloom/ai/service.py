"""Changing an organization's or a workflow's monthly AI budget (audited)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.errors import NotFound
from taskloom.orgs.models import Organization
from taskloom.workflows.models import Workflow


async def set_budget(
    *, db: AsyncSession, principal: Principal, context: AuditContext, amount: Decimal | None
) -> None:
    if principal.org_id is None:
        raise NotFound("no current organization")
    org = await db.get(Organization, principal.org_id)
    if org is None:
        raise NotFound("organization not found")
    await _set(db, context, org, org.id, AuditAction.AI_BUDGET_UPDATE, "organization", amount)


async def set_workflow_budget(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    workflow_id: uuid.UUID,
    amount: Decimal | None,
) -> None:
    """Set the workflow's monthly AI budget (None: none of its own); NotFound for a workflow
    of another organization, as for one that does not exist."""
    workflow = await db.get(Workflow, workflow_id)
    if workflow is None or workflow.org_id != principal.org_id:
        raise NotFound("workflow not found")
    await _set(
        db,
        context,
        workflow,
        workflow.org_id,
        AuditAction.AI_WORKFLOW_BUDGET_UPDATE,
        "workflow",
        amount,
    )


async def _set(
    db: AsyncSession,
    context: AuditContext,
    owner: Organization | Workflow,
    org_id: uuid.UUID,
    action: AuditAction,
    resource_type: str,
    amount: Decimal | None,
) -> None:
    """Set `owner`'s monthly_budget_usd and audit the change (old and new amounts)."""
    old = owner.monthly_budget_usd
    owner.monthly_budget_usd = amount
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=org_id,
        resource_type=resource_type,
        resource_id=owner.id,
        details={
            "old": None if old is None else str(old),
            "new": None if amount is None else str(amount),
        },
    )
