"""Per-organization monthly AI budgets with reservations.

Before a call, `reserve` locks the organization's row of the month in `ai_budget_months`, picks
the model (downgrading when little budget is left or the worst case would not fit), adds the
call's worst-case cost to `reserved_usd` and writes a `pending` ai_usage row, all in one
transaction. Two workers reserving at once queue on that row lock, so they can never both spend
the last dollar. After the call `settle` moves the actual cost from reserved to spent (0 on
failure); reservations of calls that never settled (a killed worker) are released by
`release_abandoned`, which the reconciler runs.

Months are calendar months in UTC. An organization without `monthly_budget_usd` is unlimited,
but its spend is still tracked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.ai.catalog import ModelPrice
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction, tenant_transaction

log = structlog.get_logger("taskloom.ai")

_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"


class BudgetExhausted(Exception):
    """No candidate model's worst-case cost fits in what is left of the month's budget."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Candidate:
    model: ModelPrice
    worst_case_usd: Decimal


@dataclass(frozen=True)
class Reservation:
    usage_id: uuid.UUID
    org_id: uuid.UUID
    month: date
    amount: Decimal
    model: ModelPrice
    downgraded_from: str | None
    budget_usd: Decimal | None
    remaining_usd: Decimal | None  # after this reservation


def _pick(
    candidates: list[Candidate], remaining: Decimal | None, budget: Decimal | None, below: Decimal
) -> int:
    """Index of the candidate to use, or -1 when none fits."""
    if remaining is None or budget is None:
        return 0
    index = 0
    if len(candidates) > 1 and budget > 0 and remaining < budget * below:
        index = 1  # little left: one tier cheaper
    while index < len(candidates) and candidates[index].worst_case_usd > remaining:
        index += 1
    return index if index < len(candidates) else -1


async def reserve(
    database: Database,
    *,
    org_id: uuid.UUID,
    user_id: uuid.UUID | None,
    execution_id: uuid.UUID | None,
    step_id: str | None,
    category: str | None,
    candidates: list[Candidate],
    downgrade_below: float,
) -> Reservation:
    """Reserve the worst case of the first affordable candidate (preferred model first, then
    cheaper fallbacks); raise BudgetExhausted when none fits."""
    if not candidates:
        raise ValueError("no candidate model")
    async with tenant_transaction(database, org_id=org_id, user_id=None) as db:
        budget = (
            await db.execute(
                text("select monthly_budget_usd from organizations where id = :org"),
                {"org": org_id},
            )
        ).scalar_one()
        await db.execute(
            text(
                f"insert into ai_budget_months (id, org_id, month) values (:id, :org, {_MONTH}) "  # noqa: S608 (constant SQL)
                "on conflict (org_id, month) do nothing"
            ),
            {"id": uuid.uuid4(), "org": org_id},
        )
        month, spent, reserved = (
            await db.execute(
                text(
                    "select month, spent_usd, reserved_usd from ai_budget_months "  # noqa: S608 (constant SQL)
                    f"where org_id = :org and month = {_MONTH} for update"
                ),
                {"org": org_id},
            )
        ).one()
        budget = None if budget is None else Decimal(budget)
        remaining = None if budget is None else budget - spent - reserved
        index = _pick(candidates, remaining, budget, Decimal(str(downgrade_below)))
        if index < 0:
            needed = candidates[-1].worst_case_usd
            raise BudgetExhausted(
                f"the organization's monthly AI budget of ${budget} is used up: "
                f"${spent:.2f} spent and ${reserved:.2f} reserved for calls in flight leave "
                f"${remaining:.4f}, and this call may cost up to ${needed:.4f}",
                {
                    "budget_usd": str(budget),
                    "spent_usd": str(spent),
                    "reserved_usd": str(reserved),
                    "needed_usd": str(needed),
                },
            )
        chosen = candidates[index]
        await db.execute(
            text(
                "update ai_budget_months set reserved_usd = reserved_usd + :amount "
                "where org_id = :org and month = :month"
            ),
            {"amount": chosen.worst_case_usd, "org": org_id, "month": month},
        )
        usage_id = uuid.uuid4()
        downgraded_from = candidates[0].model.name if index > 0 else None
        await db.execute(
            text(
                "insert into ai_usage (id, org_id, user_id, execution_id, step_id, provider, "
                "model, category, outcome, reserved_usd, downgraded_from) values (:id, :org, "
                ":user, :execution, :step, :provider, :model, :category, 'pending', :amount, "
                ":downgraded_from)"
            ),
            {
                "id": usage_id,
                "org": org_id,
                "user": user_id,
                "execution": execution_id,
                "step": step_id,
                "provider": chosen.model.provider,
                "model": chosen.model.name,
                "category": category,
                "amount": chosen.worst_case_usd,
                "downgraded_from": downgraded_from,
            },
        )
    if downgraded_from:
        log.info("ai_downgraded", model=chosen.model.name, downgraded_from=downgraded_from)
    return Reservation(
        usage_id=usage_id,
        org_id=org_id,
        month=month,
        amount=chosen.worst_case_usd,
        model=chosen.model,
        downgraded_from=downgraded_from,
        budget_usd=budget,
        remaining_usd=None if remaining is None else remaining - chosen.worst_case_usd,
    )


async def settle(
    database: Database,
    reservation: Reservation,
    *,
    outcome: str,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: Decimal = Decimal(0),
    latency_ms: int | None = None,
) -> None:
    """Record the call's result and move its cost from reserved to spent. If housekeeping
    already released the reservation (the call outlived AI_RESERVATION_TTL_SECONDS), only the
    actual cost is added."""
    async with tenant_transaction(database, org_id=reservation.org_id, user_id=None) as db:
        held = (
            await db.execute(
                text("select reserved_usd from ai_usage where id = :id for update"),
                {"id": reservation.usage_id},
            )
        ).scalar_one_or_none()
        if held is None:  # the organization was deleted meanwhile
            return
        await db.execute(
            text(
                "update ai_usage set outcome = :outcome, input_tokens = :input, "
                "output_tokens = :output, cost_usd = :cost, latency_ms = :latency, "
                "reserved_usd = 0 where id = :id"
            ),
            {
                "id": reservation.usage_id,
                "outcome": outcome,
                "input": input_tokens,
                "output": output_tokens,
                "cost": cost_usd,
                "latency": latency_ms,
            },
        )
        await db.execute(
            text(
                "update ai_budget_months set reserved_usd = greatest(reserved_usd - :held, 0), "
                "spent_usd = spent_usd + :cost where org_id = :org and month = :month"
            ),
            {
                "held": held,
                "cost": cost_usd,
                "org": reservation.org_id,
                "month": reservation.month,
            },
        )


async def release_abandoned(database: Database, *, older_than_seconds: int) -> int:
    """Release reservations of calls that never settled (their worker died). Runs across
    organizations on the privileged engine, from the reconciler's housekeeping."""
    async with system_transaction(database) as db:
        rows = (
            await db.execute(
                text(
                    "update ai_usage u set outcome = 'abandoned', reserved_usd = 0 "
                    "from (select id, reserved_usd from ai_usage where outcome = 'pending' "
                    "and created_at < now() - make_interval(secs => :ttl) "
                    "for update skip locked) stale "
                    "where u.id = stale.id returning u.org_id, stale.reserved_usd, "
                    "date_trunc('month', u.created_at at time zone 'UTC')::date"
                ),
                {"ttl": older_than_seconds},
            )
        ).all()
        for org_id, held, month in rows:
            await db.execute(
                text(
                    "update ai_budget_months set reserved_usd = greatest(reserved_usd - :held, 0) "
                    "where org_id = :org and month = :month"
                ),
                {"held": held, "org": org_id, "month": month},
            )
    if rows:
        log.warning("ai_reservations_released", count=len(rows))
    return len(rows)


async def month_summary(db: AsyncSession, *, org_id: uuid.UUID) -> dict[str, Any]:
    """This month's budget, spend and reservations, and spend per model (in the caller's
    tenant transaction)."""
    budget = (
        await db.execute(
            text("select monthly_budget_usd from organizations where id = :org"),
            {"org": org_id},
        )
    ).scalar_one()
    month_row = (
        await db.execute(
            text(
                f"select {_MONTH}, coalesce(max(spent_usd), 0), coalesce(max(reserved_usd), 0)"  # noqa: S608 (constant SQL)
                f" from ai_budget_months where org_id = :org and month = {_MONTH}"
            ),
            {"org": org_id},
        )
    ).one()
    per_model = (
        await db.execute(
            text(
                "select model, count(*), coalesce(sum(input_tokens), 0), "  # noqa: S608 (constant SQL)
                "coalesce(sum(output_tokens), 0), coalesce(sum(cost_usd), 0) from ai_usage "
                "where org_id = :org and created_at >= "
                f"({_MONTH})::timestamp at time zone 'UTC' group by model order by model"
            ),
            {"org": org_id},
        )
    ).all()
    month, spent, reserved = month_row
    remaining = None if budget is None else Decimal(budget) - spent - reserved
    return {
        "month": month.isoformat(),
        "budget_usd": None if budget is None else str(budget),
        "spent_usd": str(spent),
        "reserved_usd": str(reserved),
        "remaining_usd": None if remaining is None else str(remaining),
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
    }
