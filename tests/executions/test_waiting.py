"""Steps that wait (ADR 0008), against real worker processes: a durable `wait` that holds no
slot and survives a worker restart, approvals (an approver, 403 for anyone else, per item in a
for_each, timeouts), and sub-workflows (output, failure, cancellation, depth limit)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy import update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionApproval, WorkflowExecution
from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.workers import (
    CountingServer,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
    waiting_for_approval,
)


async def _approve(
    api: httpx.AsyncClient,
    account: Account,
    execution_id: str,
    path: str,
    verb: str = "approve",
    comment: str | None = None,
) -> httpx.Response:
    return await api.post(
        f"/api/executions/{execution_id}/steps/{path}/{verb}",
        json={"comment": comment} if comment else None,
        headers=account.headers,
    )


async def test_a_wait_parks_the_execution_without_a_slot_and_survives_a_worker_restart(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("after-wait")
    waiting = await create_workflow(
        api,
        owner,
        [
            {"id": "before", "type": "transform", "args": {"value": 1}},
            {"id": "pause", "type": "wait", "args": {"for": "3s"}},
            {"id": "after", "type": "http", "args": {"url": counting_server.url(key)}},
        ],
    )
    quick = await create_workflow(
        api, owner, [{"id": "only", "type": "transform", "args": {"value": "quick"}}]
    )
    first = start_worker(max_running_per_org=1)
    started = time.monotonic()
    execution_id = await execute(api, owner, waiting)
    parked = await wait_for_status(api, owner, execution_id, {"waiting"}, within=10)
    assert {s["step_id"]: s["status"] for s in parked["steps"]} == {
        "before": "succeeded",
        "pause": "waiting",
    }
    assert parked["wake_at"] is not None
    # The waiting execution holds none of its organization's one running slot.
    other = await wait_for_status(api, owner, await execute(api, owner, quick), within=10)
    assert other["status"] == "succeeded"
    assert other["output"] == "quick"

    first.stop()  # the worker that parked it is gone; another one wakes it
    start_worker(max_running_per_org=1)
    done = await wait_for_status(api, owner, execution_id, within=20)
    assert done["status"] == "succeeded", done
    assert time.monotonic() - started >= 3
    pause = next(s for s in done["steps"] if s["step_id"] == "pause")
    assert datetime.fromisoformat(pause["output"]["waited_until"]) <= datetime.now(UTC)
    assert counting_server.calls(key) == 1


async def test_an_approver_decides_and_anyone_else_gets_403(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    queue_runtime: Runtime,
) -> None:
    member = await add_member(api, owner, role="member")
    execution_id, waiting = await waiting_for_approval(api, owner, start_worker, "v2")
    [asked] = waiting["approvals"]
    assert asked["message"] == "Ship v2?"
    assert asked["status"] == "pending"
    pending = await api.get("/api/approvals", headers=member.headers)
    assert [a["id"] for a in pending.json()] == [asked["id"]]

    refused = await _approve(api, member, execution_id, "ok")
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "forbidden"
    missing = await _approve(api, owner, execution_id, "nope")
    assert missing.status_code == 404
    # Another organization's owner cannot see it, let alone decide it.
    stranger = await register(api, label="stranger", organization_name="Elsewhere")
    foreign = await _approve(api, stranger, execution_id, "ok")
    assert foreign.status_code == 404, foreign.text
    assert (await api.get("/api/approvals", headers=stranger.headers)).json() == []

    approved = await _approve(api, owner, execution_id, "ok", comment="go")
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    again = await _approve(api, owner, execution_id, "ok", verb="reject")
    assert again.status_code == 409

    done = await wait_for_status(api, owner, execution_id, within=15)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"approved": True}
    decision = next(s for s in done["steps"] if s["step_id"] == "ok")["output"]
    assert decision["approved"] is True
    assert decision["by"] == str(owner.user_id)
    assert decision["comment"] == "go"
    log = await api.get("/api/audit-logs", headers=owner.headers)
    actions = [e["action"] for e in log.json()["items"]]
    assert "execution.approve" in actions


async def test_an_approval_nobody_decides_fails_the_step_at_its_timeout_when_asked_to(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "ok",
                "type": "approval",
                "args": {"approvers": {"role": "owner"}, "timeout": "1s", "on_timeout": "fail"},
            },
            {"id": "never", "type": "transform", "args": {"value": 1}},
        ],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    await wait_for_status(api, owner, execution_id, {"waiting"}, within=15)
    done = await wait_for_status(api, owner, execution_id, within=15)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "approval_timed_out"
    assert [s["step_id"] for s in done["steps"] if s["status"] == "skipped"] == ["never"]
    [asked] = done["approvals"]
    assert asked["status"] == "timed_out"
    late = await _approve(api, owner, execution_id, "ok")
    assert late.status_code == 409


async def test_approvals_inside_a_for_each_are_decided_per_item_and_can_time_out(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    queue_runtime: Runtime,
) -> None:
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "approval",
                "for_each": "{{ input.names }}",
                "max_parallel": 3,
                "args": {
                    "approvers": {"users": [str(owner.user_id)]},
                    "message": "Invite {{ item }}?",
                    "on_timeout": "approve",
                },
            }
        ],
        output="{{ steps.each.output | map(attribute='approved') | list }}",
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id, {"names": ["ann", "bob", "cy"]})
    deadline = time.monotonic() + 15
    while True:
        body = (await api.get(f"/api/executions/{execution_id}", headers=owner.headers)).json()
        if body["status"] == "waiting" and len(body["approvals"]) == 3:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)
    asked = sorted(body["approvals"], key=lambda a: a["item_index"])
    assert [a["message"] for a in asked] == ["Invite ann?", "Invite bob?", "Invite cy?"]
    each = next(s for s in body["steps"] if s["step_id"] == "each")
    assert each["items"]["waiting"] == 3

    assert (await _approve(api, owner, execution_id, "each/items/0")).status_code == 200
    assert (await _approve(api, owner, execution_id, "each/items/1", "reject")).status_code == 200
    # Both decisions are taken in (the execution woke, ran and parked again) ...
    deadline = time.monotonic() + 15
    while True:
        body = (await api.get(f"/api/executions/{execution_id}", headers=owner.headers)).json()
        each = next(s for s in body["steps"] if s["step_id"] == "each")
        if body["status"] == "waiting" and each["items"]["succeeded"] == 2:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)
    # ... then item 2's approval times out (made due here rather than waiting 24 h), and the
    # waker finds it: on_timeout approves.
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            update(ExecutionApproval)
            .where(
                ExecutionApproval.execution_id == uuid.UUID(execution_id),
                ExecutionApproval.item_index == 2,
            )
            .values(timeout_at=datetime.now(UTC))
        )
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == uuid.UUID(execution_id))
            .values(wake_at=datetime.now(UTC))
        )
    done = await wait_for_status(api, owner, execution_id, within=15)
    assert done["status"] == "succeeded", done
    assert done["output"] == [True, False, True]
    timed_out = next(a for a in done["approvals"] if a["item_index"] == 2)
    assert timed_out["status"] == "timed_out"


async def test_deciding_one_items_approval_parks_the_execution_again_while_the_others_wait(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    """The decided item finishes once; the item still waiting does not make its step look ready
    (which kept the job re-running the step, and its finished items, until every item was
    decided)."""
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "approval",
                "for_each": "{{ input.names }}",
                "args": {"approvers": {"users": [str(owner.user_id)]}},
            }
        ],
    )
    worker = start_worker()
    execution_id = await execute(api, owner, workflow_id, {"names": ["ann", "bob"]})
    await worker.wait_for_log("execution_waiting", containing=execution_id)
    assert (await _approve(api, owner, execution_id, "each/items/0")).status_code == 200
    await worker.wait_for_log("execution_waiting", containing=execution_id, times=2)
    await asyncio.sleep(1)  # time enough to spin, were it spinning
    parked = await wait_for_status(api, owner, execution_id, {"waiting"}, within=1)
    each = next(s for s in parked["steps"] if s["step_id"] == "each")
    assert (each["items"]["succeeded"], each["items"]["waiting"]) == (1, 1)
    assert len(worker.logged("execution_waiting", execution_id)) == 2

    assert (await _approve(api, owner, execution_id, "each/items/1", "reject")).status_code == 200
    done = await wait_for_status(api, owner, execution_id, within=15)
    assert done["status"] == "succeeded", done
    assert [o["approved"] for o in done["output"]] == [True, False]


async def test_a_sub_workflow_returns_its_output_and_a_failing_child_fails_the_step(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    child = await create_workflow(
        api,
        owner,
        [
            {"id": "double", "type": "transform", "args": {"value": "{{ input.x * 2 }}"}},
            {
                "id": "maybe_fail",
                "type": "http",
                "when": "{{ input.fail }}",
                "args": {"url": counting_server.url(unique_key("child"), fail=1, status=400)},
            },
        ],
        name="child",
        output={"doubled": "{{ steps.double.output }}"},
    )
    parent = await create_workflow(
        api,
        owner,
        [
            {
                "id": "call",
                "type": "workflow",
                "args": {
                    "workflow": child,
                    "input": {"x": "{{ input.x }}", "fail": "{{ input.fail }}"},
                },
            },
            {
                "id": "after",
                "type": "transform",
                "args": {"value": "{{ steps.call.output.doubled }}"},
            },
        ],
        name="parent",
    )
    # One running execution for the organization: the parent parks while its child runs, so
    # the child is never stuck behind the parent that waits for it.
    start_worker(max_running_per_org=1)
    ok = await wait_for_status(
        api, owner, await execute(api, owner, parent, {"x": 21, "fail": False}), within=20
    )
    assert ok["status"] == "succeeded", ok
    assert ok["output"] == 42
    call = next(s for s in ok["steps"] if s["step_id"] == "call")
    child_run = (
        await api.get(f"/api/executions/{call['child_execution_id']}", headers=owner.headers)
    ).json()
    assert child_run["parent_execution_id"] == ok["id"]
    assert child_run["depth"] == 1
    assert child_run["output"] == {"doubled": 42}

    failed = await wait_for_status(
        api, owner, await execute(api, owner, parent, {"x": 1, "fail": True}), within=20
    )
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "child_failed"
    assert failed["error"]["step_id"] == "call"


async def test_cancelling_a_parent_cancels_its_waiting_child(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    child = await create_workflow(
        api,
        owner,
        [{"id": "hold", "type": "wait", "args": {"for": "1h"}}],
        name="slow child",
    )
    parent = await create_workflow(
        api,
        owner,
        [{"id": "call", "type": "workflow", "args": {"workflow": child}}],
        name="parent",
    )
    start_worker()
    parent_id = await execute(api, owner, parent)
    waiting = await wait_for_status(api, owner, parent_id, {"waiting"}, within=15)
    child_id = waiting["steps"][0]["child_execution_id"]
    await wait_for_status(api, owner, child_id, {"waiting"}, within=15)

    cancelled = await api.post(f"/api/executions/{parent_id}/cancel", headers=owner.headers)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert (await wait_for_status(api, owner, child_id, within=5))["status"] == "cancelled"


async def test_sub_workflows_nest_five_deep_at_most(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    """A workflow that calls itself: the sixth level fails with depth_exceeded, and each
    parent fails with its child."""
    placeholder = await create_workflow(
        api, owner, [{"id": "x", "type": "transform", "args": {"value": 1}}], name="self"
    )
    response = await api.put(
        f"/api/workflows/{placeholder}",
        json={
            "name": "self",
            "definition": {
                "steps": [{"id": "again", "type": "workflow", "args": {"workflow": placeholder}}]
            },
        },
        headers=owner.headers,
    )
    assert response.status_code == 200, response.text
    start_worker()
    done = await wait_for_status(api, owner, await execute(api, owner, placeholder), within=40)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "child_failed"
    depth, current = 0, done
    while current["steps"][0].get("child_execution_id"):
        child_id = current["steps"][0]["child_execution_id"]
        current = (await api.get(f"/api/executions/{child_id}", headers=owner.headers)).json()
        depth += 1
    assert depth == 5
    assert current["error"]["code"] == "depth_exceeded"


async def test_a_fan_out_of_sub_workflows_stops_at_max_descendant_executions(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    """A tenant cannot multiply its load through sub-workflows: the third child of a root whose
    allowance is two fails its item, and the step with it."""
    child = await create_workflow(
        api, owner, [{"id": "x", "type": "transform", "args": {"value": 1}}], name="child"
    )
    parent = await create_workflow(
        api,
        owner,
        [
            {
                "id": "each",
                "type": "workflow",
                "for_each": "{{ [0, 1, 2] }}",
                "args": {"workflow": child},
            }
        ],
        name="parent",
    )
    start_worker(max_descendant_executions=2)
    done = await wait_for_status(api, owner, await execute(api, owner, parent), within=20)
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "too_many_descendants"
    assert done["error"]["item_index"] == 2
    children = await api.get(
        "/api/executions", params={"workflow_id": child}, headers=owner.headers
    )
    assert len(children.json()["items"]) == 2  # the third was never created
