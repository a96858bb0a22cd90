"""Event triggers against real worker processes: a workflow starts when another ends with a
status it listens to (its output and id as input), once per end however many workers drain the
outbox, and a loop of two workflows triggering each other stops after MAX_CHAIN."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import WorkflowExecution
from taskloom.runtime import Runtime
from taskloom.triggers.events import MAX_CHAIN
from taskloom.triggers.models import TriggerDelivery, WorkflowTrigger
from tests.factories import Account
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

ECHO = [{"id": "echo", "type": "transform", "args": {"value": {"got": "{{ input }}"}}}]
FAIL = [{"id": "boom", "type": "transform", "args": {"value": "{{ 1 / 0 }}"}}]


async def listen(
    api: httpx.AsyncClient,
    account: Account,
    workflow_id: str,
    on_workflow: str,
    statuses: list[str],
) -> str:
    """An event trigger: `workflow_id` starts when `on_workflow` ends with one of `statuses`."""
    answer = await api.post(
        f"/api/workflows/{workflow_id}/triggers",
        json={"kind": "event", "on": {"workflow": on_workflow, "status": statuses}},
        headers=account.headers,
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def executions_of(runtime: Runtime, workflow_id: str) -> list[WorkflowExecution]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(WorkflowExecution)
            .where(WorkflowExecution.workflow_id == uuid.UUID(workflow_id))
            .order_by(WorkflowExecution.created_at)
        )
        return list(rows.scalars())


async def deliveries_of(runtime: Runtime, trigger_id: str) -> list[TriggerDelivery]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(TriggerDelivery)
            .where(TriggerDelivery.trigger_id == uuid.UUID(trigger_id))
            .order_by(TriggerDelivery.created_at)
        )
        return list(rows.scalars())


async def eventually(check: Any, within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_an_end_with_a_listened_status_starts_the_workflow_with_its_output(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    source = await create_workflow(api, owner, ECHO, name="source")
    on_success = await create_workflow(api, owner, ECHO, name="on-success")
    on_failure = await create_workflow(api, owner, ECHO, name="on-failure")
    failing = await create_workflow(api, owner, FAIL, name="failing")
    success_trigger = await listen(api, owner, on_success, source, ["succeeded"])
    await listen(api, owner, on_failure, failing, ["failed", "cancelled"])
    await listen(api, owner, on_failure, source, ["failed"])  # never: the source succeeds
    start_worker()

    source_run = await execute(api, owner, source, {"order": 7})
    failing_run = await execute(api, owner, failing, {})
    assert (await wait_for_status(api, owner, source_run))["status"] == "succeeded"
    assert (await wait_for_status(api, owner, failing_run))["status"] == "failed"

    [started] = await eventually(lambda: executions_of(queue_runtime, on_success))
    done = await wait_for_status(api, owner, str(started.id))
    assert done["status"] == "succeeded", done
    assert done["trigger_kind"] == "event"
    assert done["trigger_id"] == success_trigger
    assert done["input"] == {
        "execution_id": source_run,
        "workflow_id": source,
        "status": "succeeded",
        "output": {"got": {"order": 7}},
        "error": None,
    }
    [after_failure] = await eventually(lambda: executions_of(queue_runtime, on_failure))
    assert after_failure.input["execution_id"] == failing_run
    assert after_failure.input["status"] == "failed"
    assert after_failure.input["error"]["code"]
    await asyncio.sleep(2)  # nothing else arrives: one execution per end and listened status
    assert len(await executions_of(queue_runtime, on_success)) == 1
    assert len(await executions_of(queue_runtime, on_failure)) == 1
    [delivery] = await deliveries_of(queue_runtime, success_trigger)
    assert (delivery.status, delivery.execution_id) == ("accepted", started.id)
    assert delivery.source_execution_id == uuid.UUID(source_run)


async def test_two_workflows_triggering_each_other_stop_after_the_chain_limit(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    ping = await create_workflow(api, owner, ECHO, name="ping")
    pong = await create_workflow(api, owner, ECHO, name="pong")
    await listen(api, owner, pong, ping, ["succeeded"])
    back = await listen(api, owner, ping, pong, ["succeeded"])
    start_worker()

    await execute(api, owner, ping, {})

    async def stopped() -> bool:
        deliveries = await deliveries_of(queue_runtime, back)
        return any(d.status == "rejected" for d in deliveries) or len(deliveries) > MAX_CHAIN

    await eventually(stopped, within=60)
    runs = await executions_of(queue_runtime, ping) + await executions_of(queue_runtime, pong)
    assert sorted(r.trigger_depth for r in runs) == list(range(MAX_CHAIN + 1))
    rejected = [d for d in await deliveries_of(queue_runtime, back) if d.status == "rejected"]
    assert len(rejected) <= 1
    all_deliveries = []
    async with system_transaction(queue_runtime.database) as db:
        all_deliveries = list(
            (
                await db.execute(
                    select(TriggerDelivery).where(
                        TriggerDelivery.org_id == owner.org_id,
                        TriggerDelivery.status == "rejected",
                    )
                )
            ).scalars()
        )
    [loop_stop] = all_deliveries
    assert "event chain stops after 5" in (loop_stop.reason or "")


async def test_a_disabled_workflow_is_not_started_and_the_delivery_says_why(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    source = await create_workflow(api, owner, ECHO, name="source")
    target = await create_workflow(api, owner, ECHO, name="target")
    trigger = await listen(api, owner, target, source, ["succeeded"])
    patched = await api.patch(
        f"/api/workflows/{target}", json={"enabled": False}, headers=owner.headers
    )
    assert patched.status_code == 200
    start_worker()

    await wait_for_status(api, owner, await execute(api, owner, source, {}))

    [delivery] = await eventually(lambda: deliveries_of_status(queue_runtime, trigger, "rejected"))
    assert (delivery.reason or "").startswith("workflow_disabled")
    assert await executions_of(queue_runtime, target) == []


async def deliveries_of_status(
    runtime: Runtime, trigger_id: str, status: str
) -> list[TriggerDelivery]:
    return [d for d in await deliveries_of(runtime, trigger_id) if d.status == status]


async def test_two_workers_start_exactly_one_execution_per_end(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    source = await create_workflow(api, owner, ECHO, name="source")
    target = await create_workflow(api, owner, ECHO, name="target")
    trigger = await listen(api, owner, target, source, ["succeeded"])
    start_worker(wake_interval_seconds=0.1)
    start_worker(wake_interval_seconds=0.1)

    sources = [await execute(api, owner, source, {"n": n}) for n in range(20)]
    for execution_id in sources:
        await wait_for_status(api, owner, execution_id)

    async def all_handled() -> bool:
        return len(await deliveries_of_status(queue_runtime, trigger, "accepted")) >= 20

    assert await eventually(all_handled, within=60)
    await asyncio.sleep(1)
    started = await executions_of(queue_runtime, target)
    assert sorted(e.input["execution_id"] for e in started) == sorted(sources)
    async with system_transaction(queue_runtime.database) as db:
        pending = await db.scalar(
            select(func.count())
            .select_from(TriggerDelivery)
            .where(TriggerDelivery.trigger_id == uuid.UUID(trigger))
            .where(TriggerDelivery.status != "accepted")
        )
    assert pending == 0


async def test_a_trigger_row_of_another_organization_is_never_fed(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    """The outbox trigger matches the ending execution's organization too: a trigger row that
    names another organization's workflow (which the API refuses) receives nothing."""
    from tests.factories import register

    other = await register(api, label="other", organization_name="Other Org")
    theirs = await create_workflow(api, other, ECHO, name="theirs")
    mine = await create_workflow(api, owner, ECHO, name="mine")
    async with system_transaction(queue_runtime.database) as db:
        planted = WorkflowTrigger(
            org_id=owner.org_id,
            workflow_id=uuid.UUID(mine),
            kind="event",
            event_workflow_id=uuid.UUID(theirs),
            event_statuses=["succeeded", "failed", "cancelled"],
        )
        db.add(planted)
    cancelled = await execute(api, other, theirs, {})
    answer = await api.post(f"/api/executions/{cancelled}/cancel", headers=other.headers)
    assert answer.status_code in (200, 202), answer.text
    assert await deliveries_of(queue_runtime, str(planted.id)) == []


async def test_the_executions_one_start_causes_are_bounded_however_many_triggers_listen(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    source = await create_workflow(api, owner, ECHO, name="source")
    target = await create_workflow(api, owner, ECHO, name="target")
    triggers = [await listen(api, owner, target, source, ["succeeded"]) for _ in range(5)]
    start_worker(max_descendant_executions=3)

    source_run = await execute(api, owner, source, {})

    async def handled() -> list[TriggerDelivery]:
        found = [d for t in triggers for d in await deliveries_of(queue_runtime, t)]
        return found if all(d.status != "pending" for d in found) and len(found) == 5 else []

    deliveries = await eventually(handled)
    assert sorted(d.status for d in deliveries) == ["accepted"] * 3 + ["rejected"] * 2
    assert all(
        "already caused 3 executions" in (d.reason or "")
        for d in deliveries
        if d.status == "rejected"
    )
    started = await executions_of(queue_runtime, target)
    assert len(started) == 3
    assert {e.root_execution_id for e in started} == {uuid.UUID(source_run)}
