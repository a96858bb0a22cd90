"""BullMQ keeps a failed job for 14 days: what it keeps must name nobody. A step whose error
quotes a person's input fails the job with ids and codes only, and erasing the person removes
the job anyway."""

from __future__ import annotations

import uuid

import httpx

from taskloom.executions.queue import ExecutionQueue
from taskloom.runtime import Runtime
from tests.factories import PASSWORD, register
from tests.gdpr.traces import scan_redis
from tests.workers import StartWorker, create_workflow, execute, wait_for_status


async def test_a_failed_job_keeps_ids_and_codes_only_and_erasure_removes_it(
    api: httpx.AsyncClient, queue_runtime: Runtime, start_worker: StartWorker
) -> None:
    person = await register(api, label="job-subject", organization_name="Job Subject Org")
    # Looking the email up as a key fails, and the template error quotes the missing key.
    workflow_id = await create_workflow(
        api,
        person,
        [{"id": "pick", "type": "transform", "args": {"value": "{{ input[input.contact] }}"}}],
    )
    execution_id = await execute(api, person, workflow_id, {"contact": person.email})
    start_worker()
    failed = await wait_for_status(api, person, execution_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "template_error"
    assert person.email in failed["error"]["message"]  # the execution row has the message

    job = await ExecutionQueue(queue_runtime).job(uuid.UUID(execution_id))
    assert job is not None
    assert job.failedReason == "pick: template_error"
    assert job.stacktrace == []
    assert set(job.data) <= {"execution_id", "org_id", "request_id", "trace"}
    listed = await api.get("/api/queue/failed", headers=person.headers)
    [mine] = [j for j in listed.json() if j["execution_id"] == execution_id]
    assert mine["failed_reason"] == "pick: template_error"
    # Nowhere in Redis: not the job's hash, not the queue's event stream.
    assert await scan_redis(queue_runtime, [person.email]) == []

    erased = await api.request(
        "DELETE",
        "/api/user/account",
        json={"confirm": "DELETE", "password": PASSWORD},
        headers=person.headers,
    )
    assert erased.status_code == 200, erased.text
    assert await ExecutionQueue(queue_runtime).state(uuid.UUID(execution_id)) == "unknown"
    assert await scan_redis(queue_runtime, [str(person.user_id)]) == []
