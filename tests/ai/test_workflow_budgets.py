"""Budgets per execution (`max_cost_usd` of the definition) and per workflow and month, beside
the organization's and the instance key's: each cuts off alone, the tightest governs, racing
reservations never overspend, and the workflow budget's API is the organization's admins' only."""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskloom.ai import budget
from taskloom.ai.budget import BudgetExhausted, Candidate
from taskloom.ai.catalog import load_catalog
from taskloom.ai.executor import AiCall, AiStepError, run_ai
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.fakes.ai_apis import FakeAnthropic
from tests.tools.conftest import connect
from tests.workers import create_workflow, execute

CATALOG = load_catalog()
OPUS, SONNET, HAIKU = (
    CATALOG.model(n) for n in ("claude-opus-5", "claude-sonnet-4-5", "claude-haiku-4-5")
)
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]

# Executions made here that no worker runs are withdrawn after each test.
pytestmark = pytest.mark.usefixtures("withdrawn_after")


async def _owner(client: httpx.AsyncClient, runtime: Runtime, org_budget: str | None) -> Account:
    owner = await register(client, label="wfbudget")
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text("update organizations set monthly_budget_usd = :b where id = :o"),
            {"b": None if org_budget is None else Decimal(org_budget), "o": owner.org_id},
        )
    return owner


async def _workflow(
    client: httpx.AsyncClient,
    owner: Account,
    *,
    monthly: str | None = None,
    max_cost: str | None = None,
) -> str:
    extra: dict[str, Any] = {} if max_cost is None else {"max_cost_usd": max_cost}
    workflow_id = await create_workflow(client, owner, STEPS, **extra)
    if monthly is not None:
        response = await client.put(
            f"/api/ai/workflows/{workflow_id}/budget",
            json={"monthly_budget_usd": monthly},
            headers=owner.headers,
        )
        assert response.status_code == 200, response.text
    return workflow_id


async def _reserve(
    runtime: Runtime,
    owner: Account,
    execution_id: str | None,
    *candidates: Candidate,
    instance_key_budget: str | None = None,
) -> budget.Reservation:
    assert owner.org_id is not None
    return await budget.reserve(
        runtime.database,
        org_id=owner.org_id,
        user_id=None,
        execution_id=None if execution_id is None else uuid.UUID(execution_id),
        step_id="s",
        category=None,
        candidates=list(candidates),
        downgrade_below=0.2,
        instance_key_budget_usd=None
        if instance_key_budget is None
        else Decimal(instance_key_budget),
    )


async def _workflow_month(runtime: Runtime, workflow_id: str) -> tuple[Decimal, Decimal]:
    async with system_transaction(runtime.database) as db:
        spent, reserved = (
            await db.execute(
                text(
                    "select spent_usd, reserved_usd from ai_workflow_budget_months "
                    "where workflow_id = :w"
                ),
                {"w": workflow_id},
            )
        ).one()
    return spent, reserved


# --- each limit alone -------------------------------------------------------------------------


async def test_an_executions_max_cost_usd_cuts_off_its_own_calls_only(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    workflow_id = await _workflow(client, owner, max_cost="1.00")
    first, second = (
        await execute(client, owner, workflow_id),
        await execute(client, owner, workflow_id),
    )
    held = await _reserve(runtime, owner, first, Candidate(SONNET, Decimal("0.60")))
    await budget.settle(runtime.database, held, outcome="ok", cost_usd=Decimal("0.55"))
    with pytest.raises(BudgetExhausted, match=r"execution's AI budget") as refused:
        await _reserve(runtime, owner, first, Candidate(SONNET, Decimal("0.50")))
    assert refused.value.details == {
        "limit": "execution",
        "execution_id": first,
        "budget_usd": "1.00",
        "spent_usd": "0.550000",
        "reserved_usd": "0.000000",
        "needed_usd": "0.50",
    }
    # Another execution of the same workflow has a budget of its own.
    await _reserve(runtime, owner, second, Candidate(SONNET, Decimal("0.90")))


async def test_a_workflows_monthly_budget_cuts_off_all_its_executions_and_no_other_workflow(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    limited = await _workflow(client, owner, monthly="1.00")
    other = await _workflow(client, owner)
    held = await _reserve(
        runtime, owner, await execute(client, owner, limited), Candidate(SONNET, Decimal("0.60"))
    )
    assert held.workflow_id == uuid.UUID(limited)
    with pytest.raises(BudgetExhausted, match=r"workflow's monthly AI budget of \$1.00") as refused:
        await _reserve(
            runtime,
            owner,
            await execute(client, owner, limited),
            Candidate(SONNET, Decimal("0.60")),
        )
    assert refused.value.details["limit"] == "workflow"
    assert refused.value.details["workflow_id"] == limited
    await _reserve(
        runtime, owner, await execute(client, owner, other), Candidate(SONNET, Decimal("5.00"))
    )
    assert await _workflow_month(runtime, limited) == (Decimal(0), Decimal("0.600000"))
    assert await _workflow_month(runtime, other) == (Decimal(0), Decimal("5.000000"))


async def test_settling_and_releasing_move_the_workflows_month_like_the_organizations(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, "10.00")
    workflow_id = await _workflow(client, owner, monthly="5.00")
    settled = await _reserve(
        runtime, owner, await execute(client, owner, workflow_id), Candidate(SONNET, Decimal("1"))
    )
    abandoned = await _reserve(
        runtime, owner, await execute(client, owner, workflow_id), Candidate(SONNET, Decimal("2"))
    )
    await budget.settle(runtime.database, settled, outcome="ok", cost_usd=Decimal("0.25"))
    assert await _workflow_month(runtime, workflow_id) == (Decimal("0.250000"), Decimal(2))
    async with system_transaction(runtime.database) as db:
        await db.execute(
            text("update ai_usage set created_at = now() - interval '1 hour' where id = :id"),
            {"id": abandoned.usage_id},
        )
    assert await budget.release_abandoned(runtime.database, older_than_seconds=600) >= 1
    assert await _workflow_month(runtime, workflow_id) == (Decimal("0.250000"), Decimal(0))


async def test_little_left_of_an_executions_budget_downgrades_one_tier(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    execution_id = await execute(client, owner, await _workflow(client, owner, max_cost="10"))
    spend = await _reserve(runtime, owner, execution_id, Candidate(OPUS, Decimal("8.50")))
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("8.50"))
    chain = [Candidate(OPUS, Decimal("0.10")), Candidate(SONNET, Decimal("0.05"))]
    reservation = await _reserve(runtime, owner, execution_id, *chain)  # 15 % left
    assert (reservation.model.name, reservation.downgraded_from) == (SONNET.name, OPUS.name)


# --- the tightest governs ---------------------------------------------------------------------

LIMITS = ("execution", "workflow", "organization", "instance_key")


@pytest.mark.parametrize(
    ("budgets", "tightest"),
    [
        (
            {"execution": "1", "workflow": "2", "organization": "3", "instance_key": "4"},
            "execution",
        ),
        ({"execution": "2", "workflow": "1", "organization": "3", "instance_key": "4"}, "workflow"),
        (
            {"execution": "4", "workflow": "3", "organization": "1", "instance_key": "2"},
            "organization",
        ),
        (
            {"execution": "3", "workflow": "4", "organization": "2", "instance_key": "1"},
            "instance_key",
        ),
        (
            {"execution": None, "workflow": None, "organization": "2", "instance_key": None},
            "organization",
        ),
        (
            {"execution": "2", "workflow": None, "organization": None, "instance_key": "3"},
            "execution",
        ),
    ],
)
async def test_the_tightest_remaining_budget_governs_and_is_the_one_named(
    client: httpx.AsyncClient,
    runtime: Runtime,
    budgets: dict[str, str | None],
    tightest: str,
) -> None:
    owner = await _owner(client, runtime, budgets["organization"])
    workflow_id = await _workflow(
        client, owner, monthly=budgets["workflow"], max_cost=budgets["execution"]
    )
    execution_id = await execute(client, owner, workflow_id)
    smallest = Decimal(str(budgets[tightest]))
    instance = budgets["instance_key"]
    # Every limit is spent down by the same 0.50 first.
    spend = await _reserve(
        runtime, owner, execution_id, Candidate(HAIKU, Decimal("0.5")), instance_key_budget=instance
    )
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("0.5"))
    left = smallest - Decimal("0.5")
    with pytest.raises(BudgetExhausted) as refused:
        await _reserve(
            runtime,
            owner,
            execution_id,
            Candidate(HAIKU, left + Decimal("0.01")),
            instance_key_budget=instance,
        )
    assert refused.value.details["limit"] == tightest
    assert Decimal(refused.value.details["budget_usd"]) == smallest
    fits = await _reserve(
        runtime, owner, execution_id, Candidate(HAIKU, left), instance_key_budget=instance
    )
    assert fits.amount == left


# --- concurrency ------------------------------------------------------------------------------


async def _race(attempts: list[Any]) -> list[bool]:
    async def attempt(make: Any) -> bool:
        try:
            await make()
        except BudgetExhausted:
            return False
        return True

    return list(await asyncio.gather(*(attempt(make) for make in attempts)))


async def test_racing_reservations_never_spend_more_than_a_workflows_budget(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    workflow_id = await _workflow(client, owner, monthly="1.00")
    executions = [await execute(client, owner, workflow_id) for _ in range(12)]
    candidate = Candidate(SONNET, Decimal("0.30"))
    outcomes = await _race(
        [lambda e=e: _reserve(runtime, owner, e, candidate) for e in executions]  # type: ignore[misc]
    )
    assert outcomes.count(True) == 3  # 3 x 0.30 fits in 1.00, a fourth would not
    assert await _workflow_month(runtime, workflow_id) == (Decimal(0), Decimal("0.900000"))


async def test_racing_reservations_of_one_execution_never_spend_more_than_its_max_cost(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    execution_id = await execute(client, owner, await _workflow(client, owner, max_cost="1.00"))
    candidate = Candidate(SONNET, Decimal("0.30"))
    outcomes = await _race([lambda: _reserve(runtime, owner, execution_id, candidate)] * 12)
    assert outcomes.count(True) == 3
    async with system_transaction(runtime.database) as db:
        held = await db.scalar(
            text("select sum(reserved_usd) from ai_usage where execution_id = :e"),
            {"e": execution_id},
        )
    assert held == Decimal("0.900000")


# --- the API ----------------------------------------------------------------------------------


async def test_admins_set_a_workflows_budget_and_everyone_reads_it_in_the_usage_summary(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    workflow_id = await _workflow(client, owner)
    untouched = await _workflow(client, owner)  # no budget and no spend: not listed
    member = await add_member(client, owner, "member")
    viewer = await add_member(client, owner, "viewer")
    url = f"/api/ai/workflows/{workflow_id}/budget"
    refused = await client.put(url, json={"monthly_budget_usd": "9"}, headers=member.headers)
    assert refused.status_code == 403
    response = await client.put(url, json={"monthly_budget_usd": "12.50"}, headers=owner.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["workflow_id"], body["budget_usd"], body["spent_usd"], body["remaining_usd"]) == (
        workflow_id,
        "12.50",
        "0",
        "12.50",
    )
    spend = await _reserve(
        runtime, owner, await execute(client, owner, workflow_id), Candidate(HAIKU, Decimal("1"))
    )
    await budget.settle(runtime.database, spend, outcome="ok", cost_usd=Decimal("0.5"))
    read = (await client.get(url, headers=viewer.headers)).json()
    assert (read["spent_usd"], read["reserved_usd"], read["remaining_usd"]) == (
        "0.500000",
        "0.000000",
        "12.000000",
    )
    usage = (await client.get("/api/ai/usage", headers=viewer.headers)).json()
    assert [w["workflow_id"] for w in usage["workflows"]] == [workflow_id]
    assert untouched not in {w["workflow_id"] for w in usage["workflows"]}
    cleared = await client.put(url, json={"monthly_budget_usd": None}, headers=owner.headers)
    assert (cleared.json()["budget_usd"], cleared.json()["remaining_usd"]) == (None, None)
    async with system_transaction(runtime.database) as db:
        actions = (
            await db.execute(
                text(
                    "select details from audit_logs where action = 'ai.workflow_budget_update' "
                    "and resource_id = :w order by seq"
                ),
                {"w": workflow_id},
            )
        ).scalars()
        assert [(d["old"], d["new"]) for d in actions] == [(None, "12.50"), ("12.50", None)]


async def test_another_organization_can_neither_read_nor_set_a_workflows_budget(
    client: httpx.AsyncClient, runtime: Runtime
) -> None:
    owner = await _owner(client, runtime, None)
    workflow_id = await _workflow(client, owner, monthly="3.00")
    stranger = await register(client, label="stranger")
    url = f"/api/ai/workflows/{workflow_id}/budget"
    for response in (
        await client.get(url, headers=stranger.headers),
        await client.put(url, json={"monthly_budget_usd": "999"}, headers=stranger.headers),
        await client.get(f"/api/ai/workflows/{uuid.uuid4()}/budget", headers=owner.headers),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.get(url, headers=owner.headers)).json()["budget_usd"] == "3.00"
    usage = (await client.get("/api/ai/usage", headers=stranger.headers)).json()
    assert usage["workflows"] == []


@pytest.mark.parametrize(
    "body",
    [
        {"monthly_budget_usd": "-1"},
        {"monthly_budget_usd": "1.234"},
        {"monthly_budget_usd": "lots"},
        {"monthly_budget_usd": "20000000"},
        {},
        {"monthly_budget_usd": "1", "workflow_id": "x"},
    ],
)
async def test_a_bad_workflow_budget_is_a_422(
    client: httpx.AsyncClient, runtime: Runtime, body: dict[str, Any]
) -> None:
    owner = await _owner(client, runtime, None)
    workflow_id = await _workflow(client, owner)
    response = await client.put(
        f"/api/ai/workflows/{workflow_id}/budget", json=body, headers=owner.headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_failed"


@pytest.mark.parametrize("value", [0, "-0.5", "abc", 2_000_000, "0.0000001"])
async def test_a_bad_max_cost_usd_is_refused_at_save(
    client: httpx.AsyncClient, value: object
) -> None:
    owner = await register(client, label="maxcost")
    response = await client.post(
        "/api/workflows",
        json={"name": "wf", "definition": {"steps": STEPS, "max_cost_usd": value}},
        headers=owner.headers,
    )
    assert response.status_code == 422, response.text
    assert "max_cost_usd" in response.text


async def test_max_cost_usd_is_stored_with_the_definition(client: httpx.AsyncClient) -> None:
    owner = await register(client, label="maxcost")
    workflow_id = await create_workflow(client, owner, STEPS, max_cost_usd=0.25)
    stored = (await client.get(f"/api/workflows/{workflow_id}", headers=owner.headers)).json()
    assert Decimal(stored["definition"]["max_cost_usd"]) == Decimal("0.25")


async def test_an_ai_call_over_its_executions_budget_fails_with_budget_exhausted_naming_it(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_anthropic: FakeAnthropic,
) -> None:
    await connect(
        tools_api, admin, "anthropic", fake_anthropic.base_url, {"api_key": fake_anthropic.api_key}
    )
    workflow_id = await create_workflow(tools_api, admin, STEPS, max_cost_usd="0.0001")
    execution_id = await execute(tools_api, admin, workflow_id)
    assert admin.org_id is not None
    call = AiCall(
        org_id=admin.org_id,
        user_id=admin.user_id,
        execution_id=uuid.UUID(execution_id),
        step_id="s1",
        prompt="Hello",
        model="claude-haiku-4-5",
        allow_downgrade=False,
    )
    with pytest.raises(AiStepError) as refused:
        await run_ai(tools_runtime, call)
    assert (refused.value.code, refused.value.retryable) == ("budget_exhausted", False)
    assert refused.value.details["limit"] == "execution"
    assert "max_cost_usd" in refused.value.message
    assert fake_anthropic.requests == []  # refused before any request
