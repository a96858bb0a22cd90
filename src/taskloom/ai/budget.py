"""AI budgets with reservations: per organization and month, per workflow and month, per
execution, and the organization's allowance on the instance's key.

Before a call, `reserve` locks the organization's row of the month in `ai_budget_months` (and
then, for a call of an execution, its workflow's row in `ai_workflow_budget_months`: always in
that order, so two transactions never wait on each other in a cycle), checks the call against
every limit that applies, picks the model (downgrading when little is left of any limit or the
worst case would not fit), adds the call's worst-case cost to `reserved_usd` of those rows and
writes a `pending` ai_usage row, all in one transaction. Two workers reserving at once queue on
the organization's row lock, so they can never both spend the last dollar of any limit. After
the call `settle` moves the actual cost from reserved to spent (0 on failure) and announces the
`budget.threshold` events the spend crossed (ai/thresholds.py); reservations of calls that never
settled (a killed worker) are released by `release_abandoned`, which the leader worker runs as
upkeep.

The limits, each a `_Limit` in the list a call must fit in; the tightest remaining governs and
is the one a refusal names (`details.limit`):
- `execution`: `max_cost_usd` of the execution's definition, against the spent and reserved
  cost of its own ai_usage rows. A child execution (a `workflow` step) has its own
  definition's limit; its calls do not count against its parent's.
- `workflow`: the workflow's `monthly_budget_usd`, against its month row (a child execution's
  calls count against the child's workflow).
- `organization`: the organization's `monthly_budget_usd`.
- `instance_key`: a call made with the instance's own key (ANTHROPIC_API_KEY / OPENAI_API_KEY,
  not an organization's connection) must also fit in what is left of the organization's
  allowance on that key, AI_INSTANCE_KEY_MONTHLY_BUDGET_USD: anyone may register an
  organization, and its own budget (unlimited by default) is not the operator's. The month's
  row counts that spend apart (`instance_key_spent_usd`, `instance_key_reserved_usd`).
- `step`: an `agent` step's `max_cost_usd`, against the spent and reserved cost of that step's
  ai_usage rows (all its turns; a for_each step's items together).

Months are calendar months in UTC. Without a budget a scope is unlimited, but its spend is still
tracked (a workflow's too).
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

from taskloom.ai import thresholds
from taskloom.ai.catalog import ModelPrice
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.queue.host import Upkeep

if TYPE_CHECKING:
    from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.ai")

MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"


class BudgetExhausted(Exception):
    """No candidate model's worst-case cost fits in what is left of every limit that applies;
    `details["limit"]` names the tightest one that ran out."""

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
    budget_usd: Decimal | None  # the organization's
    remaining_usd: Decimal | None  # of the organization's budget, after this reservation
    workflow_id: uuid.UUID | None = None


@dataclass(frozen=True)
class _Limit:
    """One limit a call must fit in (see the module's docstring for the names)."""

    name: str
    budget: Decimal
    spent: Decimal
    reserved: Decimal
    what: str  # how a refusal names it, `{budget}` standing for the amount
    extra: tuple[tuple[str, str], ...] = ()  # more details of a refusal

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


def _exhausted(limits: list[_Limit], needed: Decimal) -> BudgetExhausted:
    """The error naming the tightest limit the call does not fit in (the first of equals)."""
    limit = min((lim for lim in limits if needed > lim.remaining), key=lambda lim: lim.remaining)
    if limit.name == "instance_key" and limit.budget == 0:
        message = (
            "this instance's AI keys are not available to organizations "
            "(AI_INSTANCE_KEY_MONTHLY_BUDGET_USD is 0): add an anthropic or openai "
            "connection with your own API key"
        )
    else:
        message = (
            f"{limit.what.format(budget=limit.budget)} is used up: ${limit.spent:.2f} spent and "
            f"${limit.reserved:.2f} reserved for calls in flight leave ${limit.remaining:.4f}, "
            f"and this call may cost up to ${needed:.4f}"
        )
        if limit.name == "instance_key":
            message += (
                "; an anthropic or openai connection with your own API key is bound by the "
                "organization's budget only"
            )
    return BudgetExhausted(
        message,
        {
            "limit": limit.name,
            **dict(limit.extra),
            "budget_usd": str(limit.budget),
            "spent_usd": str(limit.spent),
            "reserved_usd": str(limit.reserved),
            "needed_usd": str(needed),
        },
    )


@dataclass(frozen=True)
class _Scope:
    """What an execution's call also counts against: its workflow and its own limit."""

    workflow_id: uuid.UUID
    workflow_budget: Decimal | None
    execution_budget: Decimal | None


async def _scope(db: AsyncSession, execution_id: uuid.UUID | None) -> _Scope | None:
    if execution_id is None:
        return None
    row = (
        await db.execute(
            text(
                "select e.workflow_id, w.monthly_budget_usd, e.definition ->> 'max_cost_usd' "
                "from workflow_executions e left join workflows w on w.id = e.workflow_id "
                "where e.id = :execution"
            ),
            {"execution": execution_id},
        )
    ).one_or_none()
    if row is None:
        return None
    workflow_id, workflow_budget, execution_budget = row
    return _Scope(
        workflow_id=workflow_id,
        workflow_budget=None if workflow_budget is None else Decimal(workflow_budget),
        execution_budget=None if execution_budget is None else Decimal(execution_budget),
    )


async def _workflow_month(
    db: AsyncSession, org_id: uuid.UUID, workflow_id: uuid.UUID, month: date
) -> tuple[Decimal, Decimal]:
    """The workflow's month row, created if need be and locked (after the organization's)."""
    await db.execute(
        text(
            "insert into ai_workflow_budget_months (id, org_id, workflow_id, month) "
            "values (:id, :org, :workflow, :month) on conflict (workflow_id, month) do nothing"
        ),
        {"id": uuid.uuid4(), "org": org_id, "workflow": workflow_id, "month": month},
    )
    spent, reserved = (
        await db.execute(
            text(
                "select spent_usd, reserved_usd from ai_workflow_budget_months "
                "where workflow_id = :workflow and month = :month for update"
            ),
            {"workflow": workflow_id, "month": month},
        )
    ).one()
    return spent, reserved


async def _execution_spend(
    db: AsyncSession, execution_id: uuid.UUID, step_id: str | None = None
) -> tuple[Decimal, Decimal]:
    """Spent and reserved by the execution's calls, or by those of one of its steps
    (serialized by the organization's row lock)."""
    spent, reserved = (
        await db.execute(
            text(
                "select coalesce(sum(cost_usd), 0), coalesce(sum(reserved_usd), 0) "
                "from ai_usage where execution_id = :execution "
                "and (cast(:step as text) is null or step_id = :step)"
            ),
            {"execution": execution_id, "step": step_id},
        )
    ).one()
    return spent, reserved


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
    for a call with the instance's key: the organization's allowance on it, one more limit;
    `step_limit_usd` for a call of a step with a limit of its own (an agent's `max_cost_usd`)."""
    if not candidates:
        raise ValueError("no candidate model")
    refused: BudgetExhausted | None = None
    async with tenant_transaction(database, org_id=org_id, user_id=None) as db:
        budget = (
            await db.execute(
                text("select monthly_budget_usd from organizations where id = :org"),
                {"org": org_id},
            )
        ).scalar_one()
        scope = await _scope(db, execution_id)
        await db.execute(
            text(
                f"insert into ai_budget_months (id, org_id, month) values (:id, :org, {MONTH}) "  # noqa: S608 (constant SQL)
                "on conflict (org_id, month) do nothing"
            ),
            {"id": uuid.uuid4(), "org": org_id},
        )
        month, spent, reserved, instance_spent, instance_reserved = (
            await db.execute(
                text(
                    "select month, spent_usd, reserved_usd, instance_key_spent_usd, "  # noqa: S608 (constant SQL)
                    "instance_key_reserved_usd from ai_budget_months "
                    f"where org_id = :org and month = {MONTH} for update"
                ),
                {"org": org_id},
            )
        ).one()
        limits: list[_Limit] = []
        if scope is not None:
            if scope.execution_budget is not None:
                assert execution_id is not None
                limits.append(
                    _Limit(
                        "execution",
                        scope.execution_budget,
                        *await _execution_spend(db, execution_id),
                        what="the execution's AI budget (max_cost_usd of its definition) "
                        "of ${budget}",
                        extra=(("execution_id", str(execution_id)),),
                    )
                )
            if step_limit_usd is not None and step_id is not None:
                assert execution_id is not None
                limits.append(
                    _Limit(
                        "step",
                        step_limit_usd,
                        *await _execution_spend(db, execution_id, step_id),
                        what="the step's max_cost_usd of ${budget}",
                        extra=(("step_id", step_id),),
                    )
                )
            workflow_spent, workflow_reserved = await _workflow_month(
                db, org_id, scope.workflow_id, month
            )
            if scope.workflow_budget is not None:
                limits.append(
                    _Limit(
                        "workflow",
                        scope.workflow_budget,
                        workflow_spent,
                        workflow_reserved,
                        what="the workflow's monthly AI budget of ${budget}",
                        extra=(("workflow_id", str(scope.workflow_id)),),
                    )
                )
        budget = None if budget is None else Decimal(budget)
        org_limit = (
            None
            if budget is None
            else _Limit(
                "organization",
                budget,
                spent,
                reserved,
                what="the organization's monthly AI budget of ${budget}",
            )
        )
        if org_limit is not None:
            limits.append(org_limit)
        instance_key = instance_key_budget_usd is not None
        if instance_key_budget_usd is not None:
            limits.append(
                _Limit(
                    "instance_key",
                    instance_key_budget_usd,
                    instance_spent,
                    instance_reserved,
                    what="the organization's monthly allowance of ${budget} on this "
                    "instance's AI key",
                )
            )
        index = _pick(candidates, limits, Decimal(str(downgrade_below)))
        if index < 0:
            refused = _exhausted(limits, candidates[-1].worst_case_usd)
            await _announce_refusal(db, org_id, month, refused)
        else:
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
            workflow_id = None if scope is None else scope.workflow_id
            if workflow_id is not None:
                await db.execute(
                    text(
                        "update ai_workflow_budget_months "
                        "set reserved_usd = reserved_usd + :amount "
                        "where workflow_id = :workflow and month = :month"
                    ),
                    {"amount": chosen.worst_case_usd, "workflow": workflow_id, "month": month},
                )
            usage_id = uuid.uuid4()
            downgraded_from = candidates[0].model.name if index > 0 else None
            await db.execute(
                text(
                    "insert into ai_usage (id, org_id, user_id, execution_id, workflow_id, "
                    "step_id, provider, model, category, outcome, reserved_usd, downgraded_from, "
                    "instance_key) values (:id, :org, :user, :execution, :workflow, :step, "
                    ":provider, :model, :category, 'pending', :amount, :downgraded_from, "
                    ":instance_key)"
                ),
                {
                    "id": usage_id,
                    "org": org_id,
                    "user": user_id,
                    "execution": execution_id,
                    "workflow": workflow_id,
                    "step": step_id,
                    "provider": chosen.model.provider,
                    "model": chosen.model.name,
                    "category": category,
                    "amount": chosen.worst_case_usd,
                    "downgraded_from": downgraded_from,
                    "instance_key": instance_key,
                },
            )
    if refused is not None:
        raise refused  # after the commit: its announcement stays
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
        workflow_id=workflow_id,
    )


async def _announce_refusal(
    db: AsyncSession, org_id: uuid.UUID, month: date, refused: BudgetExhausted
) -> None:
    """A refusal by the organization's or a workflow's monthly budget is its 100 %
    (ai/thresholds.py); the execution's and the instance key's limits announce nothing."""
    details = refused.details
    if details["limit"] not in ("organization", "workflow"):
        return
    await thresholds.announce_exhausted(
        db,
        org_id=org_id,
        workflow_id=uuid.UUID(details["workflow_id"]) if details["limit"] == "workflow" else None,
        month=month,
        budget=Decimal(details["budget_usd"]),
        spent=Decimal(details["spent_usd"]),
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
    """Record the call's result, move its cost from reserved to spent (the organization's month
    row, then the workflow's) and announce the budget thresholds the spend crossed. If
    housekeeping already released the reservation (the call outlived
    AI_RESERVATION_TTL_SECONDS), only the actual cost is added."""
    async with tenant_transaction(database, org_id=reservation.org_id, user_id=None) as db:
        row = (
            await db.execute(
                text(
                    "select reserved_usd, instance_key, workflow_id from ai_usage "
                    "where id = :id for update"
                ),
                {"id": reservation.usage_id},
            )
        ).one_or_none()
        if row is None:  # the organization was deleted meanwhile
            return
        held, instance_key, workflow_id = row
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
        org_month = (
            await db.execute(
                text(
                    "update ai_budget_months m set reserved_usd = "
                    "greatest(m.reserved_usd - :held, 0), spent_usd = m.spent_usd + :cost, "
                    "instance_key_reserved_usd = "
                    "greatest(m.instance_key_reserved_usd - :held_on_instance_key, 0), "
                    "instance_key_spent_usd = m.instance_key_spent_usd + :cost_on_instance_key "
                    "from organizations o where o.id = m.org_id and m.org_id = :org "
                    "and m.month = :month "
                    "returning m.spent_usd, m.notified_percent, o.monthly_budget_usd"
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
        ).one_or_none()
        await _announce_spend(db, reservation, None, org_month, cost_usd)
        if workflow_id is None:
            return
        workflow_month = (
            await db.execute(
                text(
                    "update ai_workflow_budget_months m set reserved_usd = "
                    "greatest(m.reserved_usd - :held, 0), spent_usd = m.spent_usd + :cost "
                    "from workflows w where w.id = m.workflow_id and m.workflow_id = :workflow "
                    "and m.month = :month "
                    "returning m.spent_usd, m.notified_percent, w.monthly_budget_usd"
                ),
                {
                    "held": held,
                    "cost": cost_usd,
                    "workflow": workflow_id,
                    "month": reservation.month,
                },
            )
        ).one_or_none()
        await _announce_spend(db, reservation, workflow_id, workflow_month, cost_usd)


async def _announce_spend(
    db: AsyncSession,
    reservation: Reservation,
    workflow_id: uuid.UUID | None,
    month_row: Any,
    cost_usd: Decimal,
) -> None:
    """The thresholds a settled cost crossed on one month row (spent, notified, budget), the
    organization's (`workflow_id` None) or a workflow's."""
    if month_row is None or cost_usd <= 0:
        return
    spent, notified, budget = month_row
    await thresholds.announce(
        db,
        org_id=reservation.org_id,
        workflow_id=workflow_id,
        month=reservation.month,
        budget=budget,
        spent=spent,
        notified=notified,
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
                    "date_trunc('month', u.created_at at time zone 'UTC')::date, u.instance_key, "
                    "u.workflow_id"
                ),
                {"ttl": older_than_seconds},
            )
        ).all()
        # Organization by organization, and its row before its workflow's (reserve's order).
        for org_id, held, month, instance_key, workflow_id in sorted(rows, key=lambda r: str(r[0])):
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
            if workflow_id is not None:
                await db.execute(
                    text(
                        "update ai_workflow_budget_months set "
                        "reserved_usd = greatest(reserved_usd - :held, 0) "
                        "where workflow_id = :workflow and month = :month"
                    ),
                    {"held": held, "workflow": workflow_id, "month": month},
                )
    if rows:
        log.warning("ai_reservations_released", count=len(rows))
    return len(rows)


async def _release(runtime: Runtime) -> None:
    # Logged by release_abandoned.
    await release_abandoned(
        runtime.database, older_than_seconds=runtime.settings.ai_reservation_ttl_seconds
    )


ABANDONED_RESERVATIONS = Upkeep(name="abandoned_ai_reservations", run=_release)
