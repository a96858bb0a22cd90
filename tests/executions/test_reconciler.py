"""The reconciler against a real PostgreSQL and Redis, without a worker: it re-enqueues an
execution whose job vanished, and leaves alone one that finished after it was read."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import text, update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionStatus, WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.reconciler import Candidate, Reconciler, ReconcileReport
from taskloom.runtime import Runtime
from taskloom.webhooks.delivery import dispatch_pending, requeue_lost_deliveries
from tests.factories import Account
from tests.workers import create_workflow, execute


async def _orphan(api: httpx.AsyncClient, owner: Account, runtime: Runtime) -> Candidate:
    """A queued execution whose job is gone (as after a Redis flush)."""
    workflow_id = await create_workflow(
        api, owner, [{"id": "s", "type": "transform", "args": {"value": 1}}]
    )
    execution_id = uuid.UUID(await execute(api, owner, workflow_id))
    assert await ExecutionQueue(runtime).state(execution_id) == "waiting"
    await ExecutionQueue(runtime).remove(execution_id)
    assert owner.org_id is not None
    return Candidate(execution_id, owner.org_id, request_id="req-reconcile")


async def test_an_execution_whose_job_vanished_is_enqueued_again(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    orphan = await _orphan(api, owner, queue_runtime)
    report = await Reconciler(queue_runtime).settle([orphan])
    assert (report.enqueued, report.replaced, report.failed) == (1, 0, 0)
    assert await ExecutionQueue(queue_runtime).state(orphan.execution_id) == "waiting"
    job = await ExecutionQueue(queue_runtime).job(orphan.execution_id)
    assert job is not None
    assert job.data["request_id"] == "req-reconcile"


async def test_settling_counts_into_the_report_it_is_given_even_an_empty_one(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    # settle_admitted passes the pass's report on; one with nothing counted yet is falsy, and
    # its counts must not go into a report nobody returns.
    orphan = await _orphan(api, owner, queue_runtime)
    report = ReconcileReport()
    returned = await Reconciler(queue_runtime).settle([orphan], report)
    assert returned is report
    assert (report.enqueued, report.replaced, report.failed) == (1, 0, 0)


async def test_an_execution_that_finished_after_the_read_is_left_alone(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    # Read as running a moment ago; since then its worker committed it and its job was removed.
    stale = await _orphan(api, owner, queue_runtime)
    async with system_transaction(queue_runtime.database) as db:
        await db.execute(
            update(WorkflowExecution)
            .where(WorkflowExecution.id == stale.execution_id)
            .values(status=ExecutionStatus.SUCCEEDED)
        )
    report = await Reconciler(queue_runtime).settle([stale])
    assert (report.enqueued, report.replaced, report.failed) == (0, 0, 0)
    queue = ExecutionQueue(queue_runtime)
    assert await queue.state(stale.execution_id) == "unknown"  # no no-op job


async def test_webhook_deliveries_whose_job_redis_lost_are_queued_again(
    api: httpx.AsyncClient, owner: Account, queue_runtime: Runtime
) -> None:
    hook = await api.post(
        "/api/webhooks",
        json={"url": "http://127.0.0.1:9/hook", "events": ["workflow.created"]},
        headers=owner.headers,
    )
    assert hook.status_code == 201, hook.text
    for _ in range(2):  # two events, two deliveries
        await create_workflow(api, owner, [{"id": "s", "type": "transform", "args": {"value": 1}}])
    assert await dispatch_pending(queue_runtime) >= 2  # now `queued`, each with its job
    async with system_transaction(queue_runtime.database) as db:
        lost, kept = (
            await db.scalars(
                text(
                    "update webhook_deliveries set created_at = now() - interval '1 hour' "
                    "where endpoint_id = :hook returning id"
                ),
                {"hook": hook.json()["id"]},
            )
        ).all()
    await queue_runtime.queues["webhooks"].queue.remove(str(lost))  # as after a Redis flush

    assert await requeue_lost_deliveries(queue_runtime) == 1
    assert await queue_runtime.queues["webhooks"].state(str(lost)) == "waiting"
    assert await queue_runtime.queues["webhooks"].state(str(kept)) == "waiting"
    assert await requeue_lost_deliveries(queue_runtime) == 0  # nothing lost any more
