"""Changing an organization's monthly AI budget (audited)."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.errors import NotFound
from taskloom.orgs.models import Organization


async def set_budget(
    *, db: AsyncSession, principal: Principal, context: AuditContext, amount: Decimal | None
) -> None:
    if principal.org_id is None:
        raise NotFound("no current organization")
    org = await db.get(Organization, principal.org_id)
    if org is None:
        raise NotFound("organization not found")
    old = org.monthly_budget_usd
    org.monthly_budget_usd = amount
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.AI_BUDGET_UPDATE,
        org_id=org.id,
        resource_type="organization",
        resource_id=org.id,
        details={
            "old": None if old is None else str(old),
            "new": None if amount is None else str(amount),
        },
    )
