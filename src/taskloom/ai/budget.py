"""Per-organization monthly AI budgets with reservations.

Before a call, `reserve` locks the organization's row of the month in `ai_budget_months`, picks
the model (downgrading when little budget is left or the worst case would not fit), adds the
call's worst-case cost to `reserved_usd` and writes a `pending` ai_usage row, all in one
transaction. Two workers reserving at once queue on that row lock, so they can never both spend
the last dollar. After the call `settle` moves the actual cost from reserved to spent (0 on
failure); reservations of calls that never settled (a killed worker) are released by
`release_abandoned`, which the leader worker runs as upkeep.

Months are calendar months in UTC. An organization without `monthly_budget_usd` is unlimited,
but its spend is still tracked.

A call made with the instance's own key (ANTHROPIC_API_KEY / OPENAI_API_KEY, not an
organization's connection) must also fit in what is left of the organization's allowance on
that key, AI_INSTANCE_KEY_MONTHLY_BUDGET_USD: anyone may register an organization, and its own
budget (unlimited by default) is not the operator's. The month's row counts that spend apart
(`instance_key_spent_usd`, `instance_key_reserved_usd`), and the same row lock covers both
limits. Calls with the organization's own key are bound by its own budget only.

A call of an `agent` step with `max_cost_usd` must also fit in what is left of that step's
limit: the cost of its earlier calls plus what its calls in flight reserve (its `ai_usage`
rows, all of one execution and step), read under the same lock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.ai.catalog import ModelPrice
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.queue.host import Upkeep

if TYPE_CHECKING:
    from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.ai")

_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"


class BudgetExhausted(Exception):
    """No candidate model's worst-case cost fits in what is left of the month's budget, or of
    the organization's allowance on the instance's key."""

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


@dataclass(frozen=True)
class _Limit:
    """One monthly limit a call must fit in: the organization's budget, or its allowance on
    the instance's key."""

    budget: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.budget - self.spent - self.reserved


def _pick(candidates: list[Candidate], limits: list[_Limit], below: Decimal) -> int:
    """Index of the candidate to use, or -1 when none fits every limit."""
    if not limits:
        return 0
    index = 0
    if len(candidates) > 1 and any(
        limit.budget > 0 and limit.remaining < limit.budget * below for limit in limits
    ):
        index = 1  # little left: one tier cheaper
    remaining = min(limit.remaining for limit in limits)
    while index < len(candidates) and candidates[index].worst_case_usd > remaining:
        index += 1
    return index if index < len(candidates) else -1


def _exhausted(
    org_limit: _Limit | None, instance_limit: _Limit | None, needed: Decimal
) -> BudgetExhausted:
    """The error naming the limit the call does not fit in (the instance key's first)."""
    if instance_limit is not None and needed > instance_limit.remaining:
        limit, details = instance_limit, {"limit": "instance_key"}
        if limit.budget == 0:
            message = (
                "this instance's AI keys are not available to organizations "
                "(AI_INSTANCE_KEY_MONTHLY_BUDGET_USD is 0): add an anthropic or openai "
                "connection with your own API key"
            )
        else:
            message = (
                f"the organization's monthly allowance of ${limit.budget} on this instance's AI "
                f"key is used up: ${limit.spent:.2f} spent and ${limit.reserved:.2f} reserved "
                f"for calls in flight leave ${limit.remaining:.4f}, and this call may cost up to "
                f"${needed:.4f}; an anthropic or openai connection with your own API key is "
                "bound by the organization's budget only"
            )
    else:
        assert org_limit is not None  # an unlimited organization fits anything else
        limit, details = org_limit, {"limit": "organization"}
        message = (
            f"the organization's monthly AI budget of ${limit.budget} is used up: "
            f"${limit.spent:.2f} spent and ${limit.reserved:.2f} reserved for calls in flight "
            f"leave ${limit.remaining:.4f}, and this call may cost up to ${needed:.4f}"
        )
    return BudgetExhausted(
        message,
        {
            **details,
            "budget_usd": str(limit.budget),
            "spent_usd": str(limit.spent),
            "reserved_usd": str(limit.reserved),
            "needed_usd": str(needed),
        },
    )


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
    instance_key_budget_usd: Decimal | None = None,
    step_limit_usd: Decimal | None = None,
) -> Reservation:
    """Reserve the worst case of the first affordable candidate (preferred model first, then
    cheaper fallbacks); raise BudgetExhausted when none fits. `instance_key_budget_usd` is given
    for a call with the instance's key: the organization's allowance on it, a second limit.
    `step_limit_usd`: the step's own limit (an agent step's `max_cost_usd`)."""
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
        month, spent, reserved, instance_spent, instance_reserved = (
            await db.execute(
                text(
                    "select month, spent_usd, reserved_usd, instance_key_spent_usd, "  # noqa: S608 (constant SQL)
                    "instance_key_reserved_usd from ai_budget_months "
                    f"where org_id = :org and month = {_MONTH} for update"
                ),
                {"org": org_id},
            )
        ).one()
        budget = None if budget is None else Decimal(budget)
        org_limit = None if budget is None else _Limit(budget, spent, reserved)
        instance_key = instance_key_budget_usd is not None
        instance_limit = (
            None
            if instance_key_budget_usd is None
            else _Limit(instance_key_budget_usd, instance_spent, instance_reserved)
        )
        step_limit = await _step_limit(db, execution_id, step_id, step_limit_usd)
        limits = [limit for limit in (org_limit, instance_limit, step_limit) if limit is not None]
        index = _pick(candidates, limits, Decimal(str(downgrade_below)))
        if index < 0:
            needed = candidates[-1].worst_case_usd
            if step_limit is not None and needed > step_limit.remaining:
                raise _step_exhausted(step_limit, needed)
            raise _exhausted(org_limit, instance_limit, needed)
        chosen = candidates[index]
        await db.execute(
            text(
                "update ai_budget_months set reserved_usd = reserved_usd + :amount, "
                "instance_key_reserved_usd = instance_key_reserved_usd + :on_instance_key "
                "where org_id = :org and month = :month"
            ),
            {
                "amount": chosen.worst_case_usd,
                "on_instance_key": chosen.worst_case_usd if instance_key else Decimal(0),
                "org": org_id,
                "month": month,
            },
        )
        usage_id = uuid.uuid4()
        downgraded_from = candidates[0].model.name if index > 0 else None
        await db.execute(
            text(
                "insert into ai_usage (id, org_id, user_id, execution_id, step_id, provider, "
                "model, category, outcome, reserved_usd, downgraded_from, instance_key) values "
                "(:id, :org, :user, :execution, :step, :provider, :model, :category, 'pending', "
                ":amount, :downgraded_from, :instance_key)"
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
                "instance_key": instance_key,
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
        remaining_usd=None if org_limit is None else org_limit.remaining - chosen.worst_case_usd,
    )


async def _step_limit(
    db: AsyncSession, execution_id: uuid.UUID | None, step_id: str | None, limit: Decimal | None
) -> _Limit | None:
    if limit is None or execution_id is None or step_id is None:
        return None
    spent, reserved = (
        await db.execute(
            text(
                "select coalesce(sum(cost_usd), 0), coalesce(sum(reserved_usd), 0) from ai_usage "
                "where execution_id = :execution and step_id = :step"
            ),
            {"execution": execution_id, "step": step_id},
        )
    ).one()
    return _Limit(limit, spent, reserved)


def _step_exhausted(limit: _Limit, needed: Decimal) -> BudgetExhausted:
    return BudgetExhausted(
        f"the step's max_cost_usd of ${limit.budget} is used up: ${limit.spent:.4f} spent and "
        f"${limit.reserved:.4f} reserved leave ${limit.remaining:.4f}, and the next call may "
        f"cost up to ${needed:.4f}",
        {
            "limit": "step",
            "budget_usd": str(limit.budget),
            "spent_usd": str(limit.spent),
            "reserved_usd": str(limit.reserved),
            "needed_usd": str(needed),
        },
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
        row = (
            await db.execute(
                text("select reserved_usd, instance_key from ai_usage where id = :id for update"),
                {"id": reservation.usage_id},
            )
        ).one_or_none()
        if row is None:  # the organization was deleted meanwhile
            return
        held, instance_key = row
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
                "spent_usd = spent_usd + :cost, instance_key_reserved_usd = "
                "greatest(instance_key_reserved_usd - :held_on_instance_key, 0), "
                "instance_key_spent_usd = instance_key_spent_usd + :cost_on_instance_key "
                "where org_id = :org and month = :month"
            ),
            {
                "held": held,
                "cost": cost_usd,
                "held_on_instance_key": held if instance_key else Decimal(0),
                "cost_on_instance_key": cost_usd if instance_key else Decimal(0),
                "org": reservation.org_id,
                "month": reservation.month,
            },
        )


async def release_abandoned(database: Database, *, older_than_seconds: int) -> int:
    """Release reservations of calls that never settled (their worker died). Runs across
    organizations on the privileged engine: `ABANDONED_RESERVATIONS`, the leader's upkeep."""
    async with system_transaction(database) as db:
        rows = (
            await db.execute(
                text(
                    "update ai_usage u set outcome = 'abandoned', reserved_usd = 0 "
                    "from (select id, reserved_usd from ai_usage where outcome = 'pending' "
                    "and created_at < now() - make_interval(secs => :ttl) "
                    "for update skip locked) stale "
                    "where u.id = stale.id returning u.org_id, stale.reserved_usd, "
                    "date_trunc('month', u.created_at at time zone 'UTC')::date, u.instance_key"
                ),
                {"ttl": older_than_seconds},
            )
        ).all()
        for org_id, held, month, instance_key in rows:
            await db.execute(
                text(
                    "update ai_budget_months set reserved_usd = greatest(reserved_usd - :held, 0), "
                    "instance_key_reserved_usd = "
                    "greatest(instance_key_reserved_usd - :held_on_instance_key, 0) "
                    "where org_id = :org and month = :month"
                ),
                {
                    "held": held,
                    "held_on_instance_key": held if instance_key else Decimal(0),
                    "org": org_id,
                    "month": month,
                },
            )
    if rows:
        log.warning("ai_reservations_released", count=len(rows))
    return len(rows)


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
    instance = _Limit(instance_key_budget_usd, instance_spent, instance_reserved)
    return {
        "month": month.isoformat(),
        "budget_usd": None if budget is None else str(budget),
        "spent_usd": str(spent),
        "reserved_usd": str(reserved),
        "remaining_usd": None if remaining is None else str(remaining),
        "instance_key": {
            "budget_usd": str(instance.budget),
            "spent_usd": str(instance.spent),
            "reserved_usd": str(instance.reserved),
            "remaining_usd": str(instance.remaining),
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
    }


async def _release(runtime: Runtime) -> None:
    # Logged by release_abandoned.
    await release_abandoned(
        runtime.database, older_than_seconds=runtime.settings.ai_reservation_ttl_seconds
    )


ABANDONED_RESERVATIONS = Upkeep(name="abandoned_ai_reservations", run=_release)
