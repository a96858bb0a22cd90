"""What /api/ai shows of the budgets (ai/budget.py): this month's spend and reservations of the
organization, of its allowance on the instance's key, per model, and per workflow."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.ai.budget import MONTH as _MONTH


async def month_summary(
    db: AsyncSession, *, org_id: uuid.UUID, instance_key_budget_usd: Decimal
) -> dict[str, Any]:
    """This month's budget, spend and reservations, the part of them on the instance's key
    against its allowance, and spend per model (in the caller's tenant transaction)."""
    budget = (
        await db.execute(
            text("select monthly_budget_usd from organizations where id = :org"),
            {"org": org_id},
        )
    ).scalar_one()
    month_row = (
        await db.execute(
            text(
                f"select {_MONTH}, coalesce(max(spent_usd), 0), coalesce(max(reserved_usd), 0), "  # noqa: S608 (constant SQL)
                "coalesce(max(instance_key_spent_usd), 0), "
                "coalesce(max(instance_key_reserved_usd), 0) "
                f"from ai_budget_months where org_id = :org and month = {_MONTH}"
            ),
            {"org": org_id},
        )
    ).one()
    per_model = (
        await db.execute(
            # This month's calls, plus those the execution retention already summed per day
            # (ai_usage_daily) when EXECUTION_RETENTION_DAYS is shorter than a month.
            text(
                "select model, sum(calls)::bigint, sum(tin), sum(tout), sum(cost) from ("  # noqa: S608 (constant SQL)
                "select model, count(*) as calls, coalesce(sum(input_tokens), 0) as tin, "
                "coalesce(sum(output_tokens), 0) as tout, coalesce(sum(cost_usd), 0) as cost "
                "from ai_usage where org_id = :org and created_at >= "
                f"({_MONTH})::timestamp at time zone 'UTC' group by model "
                "union all select model, sum(calls), sum(input_tokens), sum(output_tokens), "
                f"sum(cost_usd) from ai_usage_daily where org_id = :org and day >= {_MONTH} "
                "group by model) as calls group by model order by model"
            ),
            {"org": org_id},
        )
    ).all()
    month, spent, reserved, instance_spent, instance_reserved = month_row
    remaining = None if budget is None else Decimal(budget) - spent - reserved
    return {
        "month": month.isoformat(),
        "budget_usd": None if budget is None else str(budget),
        "spent_usd": str(spent),
        "reserved_usd": str(reserved),
        "remaining_usd": None if remaining is None else str(remaining),
        "instance_key": {
            "budget_usd": str(instance_key_budget_usd),
            "spent_usd": str(instance_spent),
            "reserved_usd": str(instance_reserved),
            "remaining_usd": str(instance_key_budget_usd - instance_spent - instance_reserved),
        },
        "models": [
            {
                "model": model,
                "calls": calls,
                "input_tokens": int(tin),
                "output_tokens": int(tout),
                "cost_usd": str(cost),
            }
            for model, calls, tin, tout, cost in per_model
        ],
        "workflows": await workflow_months(db, org_id=org_id),
    }


_WORKFLOW_MONTHS = (
    f"select w.id, w.name, {_MONTH}, w.monthly_budget_usd, coalesce(m.spent_usd, 0), "  # noqa: S608 (constant SQL)
    "coalesce(m.reserved_usd, 0) from workflows w left join ai_workflow_budget_months m "
    f"on m.workflow_id = w.id and m.month = {_MONTH} where w.org_id = :org"
)


def _workflow_month_out(row: Any) -> dict[str, Any]:
    workflow_id, name, month, budget, spent, reserved = row
    return {
        "workflow_id": str(workflow_id),
        "name": name,
        "month": month.isoformat(),
        "budget_usd": None if budget is None else str(budget),
        "spent_usd": str(spent),
        "reserved_usd": str(reserved),
        "remaining_usd": None if budget is None else str(Decimal(budget) - spent - reserved),
    }


async def workflow_months(db: AsyncSession, *, org_id: uuid.UUID) -> list[dict[str, Any]]:
    """This month's budget, spend and reservations of every workflow that has a budget or
    has spent this month, by name (in the caller's tenant transaction)."""
    rows = (
        await db.execute(
            text(
                f"{_WORKFLOW_MONTHS} and (w.monthly_budget_usd is not null or m.id is not null) "
                "order by w.name, w.id"
            ),
            {"org": org_id},
        )
    ).all()
    return [_workflow_month_out(row) for row in rows]


async def workflow_month(
    db: AsyncSession, *, org_id: uuid.UUID, workflow_id: uuid.UUID
) -> dict[str, Any] | None:
    """This month's budget, spend and reservations of one workflow; None if the organization
    has no such workflow."""
    row = (
        await db.execute(
            text(f"{_WORKFLOW_MONTHS} and w.id = :workflow"),
            {"org": org_id, "workflow": workflow_id},
        )
    ).one_or_none()
    return None if row is None else _workflow_month_out(row)
