"""`budget.threshold` webhook events: 50, 80 and 100 % of an organization's or a workflow's
monthly budget, announced once each per month when spend settles, delivered signed like every
event."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskloom.ai import budget
from taskloom.ai.budget import Candidate
from taskloom.ai.catalog import load_catalog
from taskloom.ai.thresholds import crossed
from taskloom.db.tenancy import system_transaction
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.fakes.receiver import Receiver
from tests.webhooks.test_delivery import verify
from tests.workers import StartWorker, create_workflow, execute

HAIKU = load_catalog().model("claude-haiku-4-5")
STEPS = [{"id": "t", "type": "transform", "args": {"value": "{{ input }}"}}]
FAST = {"webhook_backoff_ms": 100, "webhook_dispatch_interval_seconds": 0.2}

# Executions made here that no worker runs are withdrawn after each test.
pytestmark = pytest.mark.usefixtures("withdrawn_after")


@pytest.mark.parametrize(
    ("budget_usd", "spent", "notified", "expected"),
    [
        ("10", "4.99", 0, []),
        ("10", "5", 0, [50]),
        ("10", "9.99", 50, [80]),
        ("10", "10", 50, [80, 100]),
        ("10", "12", 100, []),
        ("1", "0.9", 0, [50, 80]),  # a budget lowered under the spend: every passed one, in order
        ("0", "1", 0, []),  # nothing may be spent: nothing to announce
        (None, "1000", 0, []),
    ],
)
def test_the_thresholds_crossed_are_those_reached_and_not_yet_announced(
    budget_usd: str | None, spent: str, notified: int, expected: list[int]
) -> None:
    limit = None if budget_usd is None else Decimal(budget_usd)
    assert crossed(limit, Decimal(spent), notified) == expected


async def _subscribe(api: httpx.AsyncClient, owner: Account, url: str) -> dict[str, Any]:
    response = await api.post(
        "/api/webhooks", json={"url": url, "events": ["budget.threshold"]}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _set_budgets(
    api: httpx.AsyncClient, owner: Account, org: str, workflow_id: str | None, workflow: str
) -> None:
    response = await api.put(
        "/api/ai/budget", json={"monthly_budget_usd": org}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    if workflow_id is not None:
        response = await api.put(
            f"/api/ai/workflows/{workflow_id}/budget",
            json={"monthly_budget_usd": workflow},
            headers=owner.headers,
        )
        assert response.status_code == 200, response.text


async def _spend(
    runtime: Runtime, owner: Account, execution_id: str | None, cost: str
) -> budget.Reservation:
    assert owner.org_id is not None
    reservation = await budget.reserve(
        runtime.database,
        org_id=owner.org_id,
        user_id=None,
        execution_id=None if execution_id is None else uuid.UUID(execution_id),
        step_id="s",
        category=None,
        candidates=[Candidate(HAIKU, Decimal(cost))],
        downgrade_below=0,
    )
    await budget.settle(runtime.database, reservation, outcome="ok", cost_usd=Decimal(cost))
    return reservation


async def _outbox(runtime: Runtime, org_id: uuid.UUID | None) -> list[dict[str, Any]]:
    async with system_transaction(runtime.database) as db:
        rows = (
            await db.execute(
                text(
                    "select payload from webhook_deliveries where org_id = :o "
                    "and event_type = 'budget.threshold' order by created_at, "
                    "(payload -> 'data' ->> 'threshold_percent')::int"
                ),
                {"o": org_id},
            )
        ).scalars()
        return [row["data"] for row in rows]


async def test_thresholds_arrive_once_each_in_order_signed_for_workflow_and_organization(
    api: httpx.AsyncClient,
    owner: Account,
    queue_runtime: Runtime,
    start_worker: StartWorker,
    receiver: Receiver,
) -> None:
    hook = await _subscribe(api, owner, receiver.url)
    workflow_id = await create_workflow(api, owner, STEPS)
    await _set_budgets(api, owner, "10.00", workflow_id, "4.00")
    start_worker(**FAST)
    execution_id = await execute(api, owner, workflow_id)
    await _spend(queue_runtime, owner, execution_id, "1.99")  # workflow 49.75 %
    await _spend(queue_runtime, owner, execution_id, "0.01")  # workflow 50 %
    await _spend(queue_runtime, owner, execution_id, "1.30")  # workflow 82.5 %
    await _spend(queue_runtime, owner, execution_id, "0.70")  # workflow 100 %, org 40 %
    await _spend(queue_runtime, owner, None, "1.00")  # org 50 %
    await _spend(queue_runtime, owner, None, "3.00")  # org 80 %
    await _spend(queue_runtime, owner, None, "0.50")  # org 85 %: nothing new
    received = receiver.wait_for(5)
    await asyncio.sleep(1)  # nothing more comes
    assert len(receiver.received) == 5
    for sent in received:
        assert sent.headers["taskloom-event"] == "budget.threshold"
        assert verify(hook["secret"], sent.headers["taskloom-signature"], sent.body)
    events = sorted((json.loads(sent.body) for sent in received), key=lambda e: e["created_at"])
    month = events[0]["data"]["month"]
    assert month.endswith("-01")
    assert [e["data"] for e in events] == [
        {
            "scope": "workflow",
            "workflow_id": workflow_id,
            "month": month,
            "threshold_percent": 50,
            "budget_usd": "4.00",
            "spent_usd": "2.000000",
            "exhausted": False,
        },
        {
            "scope": "workflow",
            "workflow_id": workflow_id,
            "month": month,
            "threshold_percent": 80,
            "budget_usd": "4.00",
            "spent_usd": "3.300000",
            "exhausted": False,
        },
        {
            "scope": "workflow",
            "workflow_id": workflow_id,
            "month": month,
            "threshold_percent": 100,
            "budget_usd": "4.00",
            "spent_usd": "4.000000",
            "exhausted": False,
        },
        {
            "scope": "organization",
            "workflow_id": None,
            "month": month,
            "threshold_percent": 50,
            "budget_usd": "10.00",
            "spent_usd": "5.000000",
            "exhausted": False,
        },
        {
            "scope": "organization",
            "workflow_id": None,
            "month": month,
            "threshold_percent": 80,
            "budget_usd": "10.00",
            "spent_usd": "8.000000",
            "exhausted": False,
        },
    ]


async def test_racing_settles_announce_each_threshold_once(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, receiver: Receiver
) -> None:
    await _subscribe(api, owner, receiver.url)  # no worker: the events stay in the outbox
    await _set_budgets(api, owner, "1.00", None, "")
    assert owner.org_id is not None
    reservations = [
        await budget.reserve(
            queue_runtime.database,
            org_id=owner.org_id,
            user_id=None,
            execution_id=None,
            step_id="s",
            category=None,
            candidates=[Candidate(HAIKU, Decimal("0.10"))],
            downgrade_below=0,
        )
        for _ in range(10)
    ]
    await asyncio.gather(
        *(
            budget.settle(queue_runtime.database, r, outcome="ok", cost_usd=Decimal("0.10"))
            for r in reservations
        )
    )
    # Once each; `created_at` is when each settle's transaction began, so racing ones may be
    # stamped out of order: `threshold_percent` orders them (docs/WEBHOOKS.md).
    events = sorted(
        await _outbox(queue_runtime, owner.org_id), key=lambda e: e["threshold_percent"]
    )
    assert [e["threshold_percent"] for e in events] == [50, 80, 100]
    assert [e["spent_usd"] for e in events] == ["0.500000", "0.800000", "1.000000"]


async def test_a_budget_lowered_under_the_spend_announces_the_passed_thresholds_at_the_next_settle(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, receiver: Receiver
) -> None:
    await _subscribe(api, owner, receiver.url)
    await _set_budgets(api, owner, "100.00", None, "")
    await _spend(queue_runtime, owner, None, "9.00")
    assert await _outbox(queue_runtime, owner.org_id) == []
    await _set_budgets(api, owner, "10.00", None, "")
    await _spend(queue_runtime, owner, None, "0.01")  # 90.1 %: 50 and 80, lowest first
    assert [e["threshold_percent"] for e in await _outbox(queue_runtime, owner.org_id)] == [50, 80]
    await _set_budgets(api, owner, "100.00", None, "")  # raised again: announced ones stay so
    await _spend(queue_runtime, owner, None, "50.00")
    assert [e["threshold_percent"] for e in await _outbox(queue_runtime, owner.org_id)] == [50, 80]


async def test_a_call_refused_by_a_budget_announces_its_100_percent_once(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, receiver: Receiver
) -> None:
    """Every call reserves its worst case, so spend alone seldom reaches 100 %: the refusal of
    the call that would pass it is the budget's 100 % (with the lower ones not announced yet),
    announced once, though the refusal itself is raised."""
    await _subscribe(api, owner, receiver.url)
    workflow_id = await create_workflow(api, owner, STEPS)
    await _set_budgets(api, owner, "100.00", workflow_id, "1.00")
    execution_id = await execute(api, owner, workflow_id)
    await _spend(queue_runtime, owner, execution_id, "0.60")  # workflow 60 %: 50
    assert owner.org_id is not None
    for _ in range(2):  # worst case 0.50 > 0.40 left: refused, twice
        with pytest.raises(budget.BudgetExhausted) as refused:
            await budget.reserve(
                queue_runtime.database,
                org_id=owner.org_id,
                user_id=None,
                execution_id=uuid.UUID(execution_id),
                step_id="s",
                category=None,
                candidates=[Candidate(HAIKU, Decimal("0.50"))],
                downgrade_below=0,
            )
        assert refused.value.details["limit"] == "workflow"
    events = await _outbox(queue_runtime, owner.org_id)
    assert [(e["threshold_percent"], e["exhausted"], e["spent_usd"]) for e in events] == [
        (50, False, "0.600000"),
        (80, True, "0.600000"),
        (100, True, "0.600000"),
    ]
    assert {e["scope"] for e in events} == {"workflow"}
    # The organization's budget was never in the way: nothing announced for it.
    await _spend(queue_runtime, owner, None, "1.00")
    assert len(await _outbox(queue_runtime, owner.org_id)) == 3
