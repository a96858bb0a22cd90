"""`budget.threshold` webhook events: 50 %, 80 % and 100 % of an organization's or a
workflow's monthly AI budget, each announced once per month.

Spent is what counts, so crossings are found when a call settles (`ai/budget.settle`), in its
transaction: the month row's update holds the row's lock, the row's `notified_percent` says
which thresholds were already announced, and the outbox rows (`taskloom_webhook_event`, the
same function as the database triggers use) are written in that transaction. Two settles
racing queue on the row lock, so each threshold fires once; a rollback takes both the spend and
its events away. A month's thresholds are never announced again, also after the budget changes;
a budget lowered under the spend announces the passed thresholds (in order) at the next settle.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

THRESHOLDS = (50, 80, 100)
EVENT = "budget.threshold"


def crossed(budget: Decimal | None, spent: Decimal, notified: int) -> list[int]:
    """The thresholds `spent` has reached that are above `notified`, lowest first."""
    if budget is None or budget <= 0:
        return []
    return [t for t in THRESHOLDS if t > notified and spent * 100 >= budget * t]


async def announce(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID | None,
    month: date,
    budget: Decimal | None,
    spent: Decimal,
    notified: int,
) -> None:
    """Write the events of the thresholds this spend crossed and remember the highest, on the
    month row the caller has just updated (and so holds locked)."""
    passed = crossed(budget, spent, notified)
    if not passed:
        return
    if workflow_id is None:
        await db.execute(
            text(
                "update ai_budget_months set notified_percent = :p "
                "where org_id = :org and month = :month"
            ),
            {"p": passed[-1], "org": org_id, "month": month},
        )
    else:
        await db.execute(
            text(
                "update ai_workflow_budget_months set notified_percent = :p "
                "where workflow_id = :workflow and month = :month"
            ),
            {"p": passed[-1], "workflow": workflow_id, "month": month},
        )
    for percent in passed:
        data = {
            "scope": "organization" if workflow_id is None else "workflow",
            "workflow_id": None if workflow_id is None else str(workflow_id),
            "month": month.isoformat(),
            "threshold_percent": percent,
            "budget_usd": str(budget),
            "spent_usd": str(spent),
        }
        await db.execute(
            text("select taskloom_webhook_event(:org, :type, :data)"),
            {"org": org_id, "type": EVENT, "data": json.dumps(data)},
        )
