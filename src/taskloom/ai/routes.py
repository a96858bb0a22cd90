"""/api/ai: this month's AI spend (viewers and up), the organization's and each workflow's
budget (owners and admins set them) and the model catalog with its prices."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from taskloom.ai import service, summary
from taskloom.ai.catalog import load_catalog
from taskloom.ai.schemas import (
    BudgetUpdate,
    CatalogModel,
    CatalogOut,
    UsageSummary,
    WorkflowBudget,
    WorkflowBudgetUpdate,
)
from taskloom.auth.access import access
from taskloom.auth.deps import Admin, RequestContext, Viewer
from taskloom.errors import NotFound

router = APIRouter(prefix="/api/ai", tags=["ai"])


@router.get("/usage", openapi_extra=access("viewer"))
async def usage(ctx: Viewer) -> UsageSummary:
    org_id = ctx.principal.org_id
    assert org_id is not None  # require_role guarantees a current organization
    month = await summary.month_summary(
        ctx.db,
        org_id=org_id,
        instance_key_budget_usd=ctx.runtime.settings.ai_instance_key_monthly_budget_usd,
    )
    return UsageSummary.model_validate(month)


@router.put("/budget", openapi_extra=access("admin"))
async def set_budget(body: BudgetUpdate, ctx: Admin) -> UsageSummary:
    await service.set_budget(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, amount=body.monthly_budget_usd
    )
    return await usage(ctx)


@router.get("/workflows/{workflow_id}/budget", openapi_extra=access("viewer"))
async def workflow_budget(workflow_id: uuid.UUID, ctx: Viewer) -> WorkflowBudget:
    """The workflow's budget and this month's spend (404 for another organization's)."""
    return await _workflow_month(ctx, workflow_id)


@router.put("/workflows/{workflow_id}/budget", openapi_extra=access("admin"))
async def set_workflow_budget(
    workflow_id: uuid.UUID, body: WorkflowBudgetUpdate, ctx: Admin
) -> WorkflowBudget:
    await service.set_workflow_budget(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        workflow_id=workflow_id,
        amount=body.monthly_budget_usd,
    )
    return await _workflow_month(ctx, workflow_id)


async def _workflow_month(ctx: RequestContext, workflow_id: uuid.UUID) -> WorkflowBudget:
    org_id = ctx.principal.org_id
    assert org_id is not None  # require_role guarantees a current organization
    month = await summary.workflow_month(ctx.db, org_id=org_id, workflow_id=workflow_id)
    if month is None:
        raise NotFound("workflow not found")
    return WorkflowBudget.model_validate(month)


@router.get("/models", openapi_extra=access("viewer"))
async def models(ctx: Viewer) -> CatalogOut:
    catalog = load_catalog(ctx.runtime.settings.ai_model_catalog)
    return CatalogOut(
        version=catalog.version,
        default_category=catalog.default_category,
        categories=catalog.categories,
        tiers=catalog.tiers,
        models=[
            CatalogModel(
                name=m.name,
                provider=m.provider,
                input_usd_per_million_tokens=str(m.input_per_million),
                output_usd_per_million_tokens=str(m.output_per_million),
                max_output_tokens=m.max_output_tokens,
                retires=m.retires,
            )
            for m in catalog.models.values()
        ],
    )
