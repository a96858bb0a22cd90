"""Per-organization monthly budgets: atomic reservations, settlement, downgrade, exhaustion."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import text

from taskloom.ai import budget
from taskloom.ai.budget import BudgetExhausted, Candidate
from taskloom.ai.catalog import load_catalog
from taskloom.ai.summary import month_summary
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.runtime import Runtime
from tests.factories import register

CATALOG = load_catalog()
OPUS, SONNET, HAIKU = (
    CATALOG.model(n) for n in ("claude-opus-5", "claude-sonnet-4-5", "claude-haiku-4-5")
)


async def _org_with_budget(
    client: httpx.AsyncClient, runtime: Runtime, usd: str | None
) -> uuid.UUID:
    owner = await register(client, label="budget")
    assert owner.org_id is not None
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text("update organizations set monthly_budget_usd = :b where id = :o"),
            {"b": None if usd is None else Decimal(usd), "o": owner.org_id},
        )
    return owner.org_id


async def _reserve(
    runtime: Runtime,
    org_id: uuid.UUID,
    *candidates: Candidate,
    instance_key_budget: str | None = None,
) -> budget.Reservation:
    return await budget.reserve(
        runtime.database,
        org_id=org_id,
        user_id=None,
        execution_id=None,
        step_id="s",
        category="writing",
        candidates=list(candidates),
        downgrade_below=0.2,
        instance_key_budget_usd=None
        if instance_key_budget is None
        else Decimal(instance_key_budget),
    )


async def _month(runtime: Runtime, org_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    async with system_transaction(runtime.database) as db:
        spent, reserved = (
            await db.execute(
                text("select spent_usd, reserved_usd from ai_budget_months where org_id = :o"),
                {"o": org_id},
            )
        ).one()
    return spent, reserved


async def _instance_key_month(runtime: Runtime, org_id: uuid.UUID) -> tuple[Decimal, Decimal]:
    async with system_transaction(runtime.database) as db:
        spent, reserved = (
            await db.execute(
                text(
                    "select instance_key_spent_usd, instance_key_reserved_usd "
                    "from ai_budget_months where org_id = :o"
                ),
                {"o": org_id},
            )
        ).one()
    return spent, reserved


async def test_concurrent_reservations_never_spend_more_than_the_budget(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "1.00")
    candidate = Candidate(SONNET, Decimal("0.30"))

    async def attempt() -> bool:
        try:
            await _reserve(runtime, org_id, candidate)
        except BudgetExhausted:
            return False
        return True

    outcomes = await asyncio.gather(*(attempt() for _ in range(12)))
    assert outcomes.count(True) == 3  # 3 x 0.30 fits in 1.00, a fourth would not
    assert await _month(runtime, org_id) == (Decimal(0), Decimal("0.900000"))


async def test_settling_moves_the_actual_cost_from_reserved_to_spent(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "5.00")
    held = await _reserve(runtime, org_id, Candidate(SONNET, Decimal("0.50")))
    failed = await _reserve(runtime, org_id, Candidate(SONNET, Decimal("0.25")))
    await budget.settle(
        runtime.database,
        held,
        outcome="ok",
        input_tokens=1000,
        output_tokens=100,
        cost_usd=SONNET.cost(1000, 100),
        latency_ms=12,
    )
    await budget.settle(runtime.database, failed, outcome="ai_server_error")
    assert await _month(runtime, org_id) == (Decimal("0.004500"), Decimal(0))
    async with system_transaction(runtime.database) as db:
        rows = (
            await db.execute(
                text(
                    "select outcome, input_tokens, output_tokens, cost_usd, reserved_usd "
                    "from ai_usage where org_id = :o order by cost_usd desc"
                ),
                {"o": org_id},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("ok", 1000, 100, Decimal("0.004500"), Decimal(0)),
        ("ai_server_error", 0, 0, Decimal(0), Decimal(0)),
    ]


async def test_little_budget_left_downgrades_one_tier_and_records_it(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "10.00")
    spend = await _reserve(runtime, org_id, Candidate(OPUS, Decimal("8.50")))
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("8.50"))
    chain = [
        Candidate(OPUS, Decimal("0.10")),
        Candidate(SONNET, Decimal("0.05")),
        Candidate(HAIKU, Decimal("0.01")),
    ]
    reservation = await _reserve(runtime, org_id, *chain)  # 1.50 of 10 left: under 20 %
    assert (reservation.model.name, reservation.downgraded_from) == (
        "claude-sonnet-4-5",
        "claude-opus-5",
    )
    async with system_transaction(runtime.database) as db:
        recorded = await db.scalar(
            text("select downgraded_from from ai_usage where id = :id"),
            {"id": reservation.usage_id},
        )
    assert recorded == "claude-opus-5"


async def test_a_call_whose_worst_case_does_not_fit_takes_a_cheaper_model_or_fails(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "1.00")
    chain = [Candidate(OPUS, Decimal("2.00")), Candidate(HAIKU, Decimal("0.60"))]
    assert (await _reserve(runtime, org_id, *chain)).model.name == "claude-haiku-4-5"
    with pytest.raises(BudgetExhausted, match=r"budget of \$1.00 is used up") as exhausted:
        await _reserve(runtime, org_id, *chain)
    assert exhausted.value.details["reserved_usd"] == "0.600000"


async def test_without_a_budget_calls_are_unlimited_but_tracked(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, None)
    reservation = await _reserve(runtime, org_id, Candidate(OPUS, Decimal("1000")))
    assert reservation.model.name == "claude-opus-5"
    await budget.settle(runtime.database, reservation, outcome="ok", cost_usd=Decimal("0.25"))
    async with tenant_transaction(runtime.database, org_id=org_id, user_id=None) as db:
        summary = await month_summary(db, org_id=org_id, instance_key_budget_usd=Decimal(5))
    assert (summary["budget_usd"], summary["spent_usd"], summary["remaining_usd"]) == (
        None,
        "0.250000",
        None,
    )
    assert summary["instance_key"]["spent_usd"] == "0.000000"  # not made with the instance key
    assert summary["models"][0]["calls"] == 1


async def test_reservations_of_calls_that_never_settled_are_released(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "1.00")
    reservation = await _reserve(runtime, org_id, Candidate(SONNET, Decimal("0.70")))
    async with system_transaction(runtime.database) as db:  # the worker died an hour ago
        await db.execute(
            text("update ai_usage set created_at = now() - interval '1 hour' where id = :id"),
            {"id": reservation.usage_id},
        )
    assert await budget.release_abandoned(runtime.database, older_than_seconds=1800) >= 1
    assert await _month(runtime, org_id) == (Decimal(0), Decimal(0))
    # A late settle after the release adds the actual cost once and holds nothing back.
    await budget.settle(runtime.database, reservation, outcome="ok", cost_usd=Decimal("0.10"))
    assert await _month(runtime, org_id) == (Decimal("0.100000"), Decimal(0))


# --- the organization's allowance on the instance's key (AI_INSTANCE_KEY_MONTHLY_BUDGET_USD) ---


async def test_concurrent_instance_key_calls_of_an_unlimited_organization_stop_at_the_allowance(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, None)  # its own budget: unlimited
    candidate = Candidate(SONNET, Decimal("0.30"))

    async def attempt() -> str:
        try:
            await _reserve(runtime, org_id, candidate, instance_key_budget="1.00")
        except BudgetExhausted as exhausted:
            return str(exhausted.details["limit"])
        return "reserved"

    outcomes = await asyncio.gather(*(attempt() for _ in range(12)))
    # 3 x 0.30 fits in the 1.00 allowance, a fourth would not.
    assert sorted(outcomes) == ["instance_key"] * 9 + ["reserved"] * 3
    assert await _instance_key_month(runtime, org_id) == (Decimal(0), Decimal("0.900000"))
    assert await _month(runtime, org_id) == (Decimal(0), Decimal("0.900000"))


async def test_the_organizations_own_key_is_not_bound_by_the_instance_key_allowance(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "100.00")
    spend = await _reserve(
        runtime, org_id, Candidate(SONNET, Decimal("0.50")), instance_key_budget="1.00"
    )
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("0.90"))
    with pytest.raises(BudgetExhausted, match=r"allowance of \$1.00 on this instance's AI key"):
        await _reserve(
            runtime, org_id, Candidate(SONNET, Decimal("0.50")), instance_key_budget="1.00"
        )
    # The same organization's calls with its own connection: only its own budget counts.
    own = await _reserve(runtime, org_id, Candidate(OPUS, Decimal("20.00")))
    assert own.model.name == "claude-opus-5"
    await budget.settle(runtime.database, own, outcome="ok", cost_usd=Decimal("15.00"))
    assert await _instance_key_month(runtime, org_id) == (Decimal("0.900000"), Decimal(0))
    assert await _month(runtime, org_id) == (Decimal("15.900000"), Decimal(0))
    async with tenant_transaction(runtime.database, org_id=org_id, user_id=None) as db:
        summary = await month_summary(db, org_id=org_id, instance_key_budget_usd=Decimal(1))
    assert summary["instance_key"] == {
        "budget_usd": "1",
        "spent_usd": "0.900000",
        "reserved_usd": "0.000000",
        "remaining_usd": "0.100000",
    }


async def test_an_instance_key_call_fits_the_organizations_own_budget_too(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, "0.40")
    with pytest.raises(BudgetExhausted, match=r"monthly AI budget of \$0.40 is used up") as low:
        await _reserve(runtime, org_id, Candidate(SONNET, Decimal("0.50")), instance_key_budget="5")
    assert low.value.details["limit"] == "organization"


async def test_little_instance_key_allowance_left_downgrades_one_tier(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, None)
    spend = await _reserve(
        runtime, org_id, Candidate(OPUS, Decimal("4.50")), instance_key_budget="5"
    )
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("4.50"))
    chain = [Candidate(OPUS, Decimal("0.10")), Candidate(SONNET, Decimal("0.05"))]
    reservation = await _reserve(runtime, org_id, *chain, instance_key_budget="5")
    assert (reservation.model.name, reservation.downgraded_from) == (
        "claude-sonnet-4-5",
        "claude-opus-5",
    )


async def test_an_allowance_of_zero_refuses_every_instance_key_call(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, None)
    with pytest.raises(BudgetExhausted, match="AI_INSTANCE_KEY_MONTHLY_BUDGET_USD is 0"):
        await _reserve(
            runtime, org_id, Candidate(HAIKU, Decimal("0.000001")), instance_key_budget="0"
        )


async def test_abandoned_instance_key_reservations_are_released_from_both_counters(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    org_id = await _org_with_budget(client, runtime, None)
    reservation = await _reserve(
        runtime, org_id, Candidate(SONNET, Decimal("0.70")), instance_key_budget="1.00"
    )
    async with system_transaction(runtime.database) as db:  # the worker died an hour ago
        await db.execute(
            text("update ai_usage set created_at = now() - interval '1 hour' where id = :id"),
            {"id": reservation.usage_id},
        )
    assert await budget.release_abandoned(runtime.database, older_than_seconds=1800) >= 1
    assert await _instance_key_month(runtime, org_id) == (Decimal(0), Decimal(0))
    assert await _month(runtime, org_id) == (Decimal(0), Decimal(0))
    # A late settle counts the actual cost against both.
    await budget.settle(runtime.database, reservation, outcome="ok", cost_usd=Decimal("0.10"))
    assert await _instance_key_month(runtime, org_id) == (Decimal("0.100000"), Decimal(0))
