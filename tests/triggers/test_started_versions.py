"""Every start records the version it ran, against real worker processes: a schedule's tick, an
event trigger and a parent's `workflow` step start the workflow at its current version (the
API's and a webhook's starts: tests/workflows/test_versions.py)."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import WorkflowExecution
from taskloom.runtime import Runtime
from tests.factories import Account
from tests.triggers.schedule_support import create_schedule, eventually, pause
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

ECHO = [{"id": "echo", "type": "transform", "args": {"value": "{{ input }}"}}]


async def _executions_of(runtime: Runtime, workflow_id: str) -> list[WorkflowExecution]:
    async with system_transaction(runtime.database) as db:
        rows = await db.execute(
            select(WorkflowExecution).where(WorkflowExecution.workflow_id == uuid.UUID(workflow_id))
        )
        return list(rows.scalars())


async def test_schedule_event_and_sub_workflow_starts_record_the_current_version(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    target = await create_workflow(api, owner, ECHO, name="target")
    source = await create_workflow(api, owner, ECHO, name="source")
    parent = await create_workflow(
        api,
        owner,
        [{"id": "child", "type": "workflow", "args": {"workflow": target, "input": {}}}],
        name="parent",
    )
    listening = await api.post(
        f"/api/workflows/{target}/triggers",
        json={"kind": "event", "on": {"workflow": source, "status": ["succeeded"]}},
        headers=owner.headers,
    )
    assert listening.status_code == 201, listening.text
    for n in (2, 3):  # the target is at version 3 when anything starts it
        saved = await api.put(
            f"/api/workflows/{target}",
            json={"name": f"target v{n}", "definition": {"steps": ECHO}},
            headers=owner.headers,
        )
        assert saved.json()["version"] == n, saved.text
    start_worker()
    schedule_id = await create_schedule(api, owner, target, cron="* * * * * *")
    source_run = await execute(api, owner, source)
    parent_run = await execute(api, owner, parent)
    assert (await wait_for_status(api, owner, source_run))["status"] == "succeeded"
    assert (await wait_for_status(api, owner, parent_run))["status"] == "succeeded"

    async def every_start() -> list[WorkflowExecution] | None:
        found = await _executions_of(queue_runtime, target)
        kinds = {e.trigger_kind for e in found}
        child = any(e.parent_execution_id == uuid.UUID(parent_run) for e in found)
        return found if child and {"schedule", "event"} <= kinds else None

    await eventually(every_start, within=30, what="a scheduled, an event and a child start")
    await pause(api, owner, schedule_id)
    await api.delete(f"/api/schedules/{schedule_id}", headers=owner.headers)
    started = await _executions_of(queue_runtime, target)
    assert {e.trigger_kind for e in started} >= {"schedule", "event"}
    assert any(e.parent_execution_id == uuid.UUID(parent_run) for e in started)
    assert {e.workflow_version for e in started} == {3}
    for execution in started:
        shown = await api.get(f"/api/executions/{execution.id}", headers=owner.headers)
        assert shown.json()["workflow_version"] == 3
