"""`budget.threshold` webhook events: 50 %, 80 % and 100 % of an organization's or a
workflow's monthly AI budget, each announced once per month.

Spent is what counts, so crossings are found when a call settles (`ai/budget.settle`), in its
transaction: the month row's update holds the row's lock, the row's `notified_percent` says
which thresholds were already announced, and the outbox rows (`taskloom_webhook_event`, the
same function as the database triggers use) are written in that transaction. Two settles
racing queue on the row lock, so each threshold fires once; a rollback takes both the spend and
its events away. A month's thresholds are never announced again, also after the budget changes;
a budget lowered under the spend announces the passed thresholds (in order) at the next settle.

Every call reserves its worst case first, so spend alone seldom reaches 100 %: the call that
would pass it is refused instead. A refusal by an organization's or a workflow's budget is
therefore its 100 % too (`announce_exhausted`, `exhausted: true` in the event), announced by
`reserve` in a transaction of its own that commits before the refusal is raised.
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
    await _write(
        db, org_id, workflow_id, month, budget, spent, crossed(budget, spent, notified), False
    )


async def announce_exhausted(
    db: AsyncSession,
    *,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID | None,
    month: date,
    budget: Decimal,
    spent: Decimal,
) -> None:
    """A call was refused because this budget has no room for it: announce 100 % (and any
    lower threshold not announced yet, in order) unless this month's 100 % went out already.
    The caller holds the month row locked (reserve locks it before deciding)."""
    table, key = ("ai_budget_months", "org_id") if workflow_id is None else _WORKFLOW_MONTHS
    notified = (
        await db.execute(
            text(f"select notified_percent from {table} where {key} = :id and month = :month"),  # noqa: S608 (constant SQL)
            {"id": org_id if workflow_id is None else workflow_id, "month": month},
        )
    ).scalar_one()
    passed = [t for t in THRESHOLDS if t > notified]
    await _write(db, org_id, workflow_id, month, budget, spent, passed, True)


_WORKFLOW_MONTHS = ("ai_workflow_budget_months", "workflow_id")


async def _write(
    db: AsyncSession,
    org_id: uuid.UUID,
    workflow_id: uuid.UUID | None,
    month: date,
    budget: Decimal | None,
    spent: Decimal,
    passed: list[int],
    exhausted: bool,
) -> None:
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
            "exhausted": exhausted,
        }
        await db.execute(
            text("select taskloom_webhook_event(:org, :type, :data)"),
            {"org": org_id, "type": EVENT, "data": json.dumps(data)},
        )
