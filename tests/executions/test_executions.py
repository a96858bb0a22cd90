"""Executions end to end: API ⇒ queue ⇒ a real worker process ⇒ rows, with a local HTTP server
counting every call the steps make."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import zipfile
from typing import Any

import httpx

from taskloom.config import Settings
from taskloom.runtime import Runtime
from tests.factories import Account, add_member
from tests.workers import (
    CountingServer,
    ProxiedDatabase,
    StartWorker,
    create_workflow,
    execute,
    unique_key,
    wait_for_status,
)


async def test_execute_runs_every_step_and_passes_outputs_between_them(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("templated")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "greet",
                "type": "transform",
                "args": {"value": {"msg": "Hello {{ input.name }}", "n": "{{ input.n * 2 }}"}},
            },
            {
                "id": "call",
                "type": "http",
                "args": {
                    "method": "POST",
                    "url": counting_server.url(key),
                    "headers": {"Authorization": "Bearer {{ input.token }}"},
                    "json": {
                        "greeting": "{{ steps.greet.output.msg }}",
                        "n": "{{ steps.greet.output.n }}",
                    },
                },
            },
            {"id": "pick", "type": "transform", "args": {"value": "{{ steps.call.output.body }}"}},
        ],
    )
    start_worker()
    execution_id = await execute(
        api, owner, workflow_id, {"name": "Ann", "n": 3, "token": "tok-SECRET-1"}
    )
    done = await wait_for_status(api, owner, execution_id)

    assert done["status"] == "succeeded", done
    assert done["output"] == {"key": key, "call": 1, "body": {"greeting": "Hello Ann", "n": 6}}
    assert [(s["step_id"], s["status"], s["attempts"]) for s in done["steps"]] == [
        ("greet", "succeeded", 1),
        ("call", "succeeded", 1),
        ("pick", "succeeded", 1),
    ]
    assert done["steps"][0]["output"] == {"msg": "Hello Ann", "n": 6}
    # What a step was called with is kept for debugging, minus anything that looks secret.
    assert done["steps"][1]["input"]["headers"] == {"Authorization": "***"}
    assert done["steps"][1]["input"]["json"] == {"greeting": "Hello Ann", "n": 6}
    assert counting_server.calls(key) == 1
    # The downstream service can de-duplicate: the key names the execution and the step.
    assert counting_server.log.idempotency_keys[key] == [f"{execution_id}:call"]


async def test_a_503_is_retried_with_backoff_until_it_succeeds(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("flaky")
    workflow_id = await create_workflow(
        api,
        owner,
        [{"id": "call", "type": "http", "args": {"url": counting_server.url(key, fail=2)}}],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    done = await wait_for_status(api, owner, execution_id)

    assert done["status"] == "succeeded", done
    assert counting_server.calls(key) == 3  # 503, 503, 200
    assert done["steps"][0]["attempts"] == 3
    assert done["steps"][0]["error"] is None
    assert done["error"] is None


async def test_retries_run_out_and_the_execution_fails_with_the_last_error(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("down")
    workflow_id = await create_workflow(
        api,
        owner,
        [{"id": "call", "type": "http", "args": {"url": counting_server.url(key, fail=99)}}],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    done = await wait_for_status(api, owner, execution_id)

    assert done["status"] == "failed"
    assert counting_server.calls(key) == 3  # EXECUTION_MAX_ATTEMPTS
    assert done["error"]["step_id"] == "call"
    assert done["error"]["attempt"] == 3
    assert "503" in done["error"]["message"]
    assert done["steps"][0]["status"] == "failed"


async def test_a_4xx_fails_at_once_and_retry_resumes_at_the_failed_step(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    first, second = unique_key("first"), unique_key("second")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "first", "type": "http", "args": {"url": counting_server.url(first)}},
            {
                "id": "second",
                "type": "http",
                "args": {"url": counting_server.url(second, fail=1, status=404)},
            },
        ],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    failed = await wait_for_status(api, owner, execution_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "http_status"
    assert counting_server.calls(second) == 1  # not retried: a 404 will not pass on its own

    listed = await api.get("/api/queue/failed", headers=owner.headers)
    assert listed.status_code == 200
    mine = next(j for j in listed.json() if j["execution_id"] == execution_id)
    assert mine["job_state"] == "failed"
    assert mine["failed_reason"] == "second: http_status"  # codes only: BullMQ keeps it 14 days

    retried = await api.post(f"/api/executions/{execution_id}/retry", headers=owner.headers)
    assert retried.status_code == 202, retried.text
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done
    assert counting_server.calls(first) == 1  # its output was kept, it did not run again
    assert counting_server.calls(second) == 2
    again = await api.post(f"/api/executions/{execution_id}/retry", headers=owner.headers)
    assert again.status_code == 409


async def test_cancel_a_queued_execution(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key = unique_key("never")
    workflow_id = await create_workflow(
        api, owner, [{"id": "call", "type": "http", "args": {"url": counting_server.url(key)}}]
    )
    execution_id = await execute(api, owner, workflow_id)  # no worker yet
    cancelled = await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"

    start_worker()
    control = await execute(api, owner, workflow_id)  # proves the worker is taking jobs
    assert (await wait_for_status(api, owner, control))["status"] == "succeeded"
    assert counting_server.calls(key) == 1  # only the control execution called it
    assert (await wait_for_status(api, owner, execution_id))["status"] == "cancelled"


async def test_cancel_a_running_execution_stops_after_the_current_step(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    slow, after = unique_key("slow"), unique_key("after")
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {"id": "slow", "type": "http", "args": {"url": counting_server.url(slow, sleep=1.5)}},
            {"id": "after", "type": "http", "args": {"url": counting_server.url(after)}},
        ],
    )
    start_worker()
    execution_id = await execute(api, owner, workflow_id)
    await wait_for_status(api, owner, execution_id, {"running"})
    requested = await api.post(f"/api/executions/{execution_id}/cancel", headers=owner.headers)
    assert requested.status_code == 200
    assert requested.json()["cancel_requested_at"] is not None

    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "cancelled"
    assert counting_server.calls(slow) == 1
    assert counting_server.calls(after) == 0
    assert [s["step_id"] for s in done["steps"]] == ["slow"]


async def test_list_executions_filters_and_pages(
    api: httpx.AsyncClient, owner: Account, counting_server: CountingServer
) -> None:
    workflow_id = await create_workflow(
        api, owner, [{"id": "t", "type": "transform", "args": {"value": 1}}]
    )
    other_id = await create_workflow(
        api, owner, [{"id": "t", "type": "transform", "args": {"value": 2}}], name="other"
    )
    ids = [await execute(api, owner, workflow_id) for _ in range(5)]
    await execute(api, owner, other_id)

    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"workflow_id": workflow_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = await api.get("/api/executions", params=params, headers=owner.headers)
        assert page.status_code == 200, page.text
        seen += [item["id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each exactly once

    queued = await api.get(
        "/api/executions",
        params={"status": "queued", "workflow_id": other_id},
        headers=owner.headers,
    )
    assert len(queued.json()["items"]) == 1
    bad = await api.get("/api/executions", params={"cursor": "nope"}, headers=owner.headers)
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_cursor"


async def test_roles_and_tenants(
    api: httpx.AsyncClient, owner: Account, queue_settings: Settings
) -> None:
    steps = [{"id": "t", "type": "transform", "args": {"value": 1}}]
    workflow_id = await create_workflow(api, owner, steps)
    viewer = await add_member(api, owner, "viewer")
    assert (
        await api.get(f"/api/workflows/{workflow_id}", headers=viewer.headers)
    ).status_code == 200
    denied = await api.post(f"/api/workflows/{workflow_id}/execute", headers=viewer.headers)
    assert denied.status_code == 403
    member = await add_member(api, owner, "member")
    assert (await api.get("/api/queue/failed", headers=member.headers)).status_code == 403

    from tests.factories import register

    stranger = await register(api, label="stranger", organization_name="Elsewhere")
    for method, path in [
        ("GET", f"/api/workflows/{workflow_id}"),
        ("PUT", f"/api/workflows/{workflow_id}"),
        ("DELETE", f"/api/workflows/{workflow_id}"),
        ("POST", f"/api/workflows/{workflow_id}/execute"),
    ]:
        body = {"name": "x", "definition": {"steps": steps}} if method == "PUT" else None
        response = await api.request(method, path, json=body, headers=stranger.headers)
        assert response.status_code == 404, (method, path, response.text)


async def test_a_queued_export_is_built_by_a_worker_and_downloads_once(
    api: httpx.AsyncClient, owner: Account, start_worker: StartWorker
) -> None:
    queued = await api.post("/api/user/data-export", headers=owner.headers)
    assert queued.status_code == 202, queued.text
    body = queued.json()
    link = body["download_url"]
    early = await api.get(link)
    assert early.status_code in (409, 200)  # not ready yet (unless a worker is very quick)
    if early.status_code == 409:
        assert early.json()["error"]["code"] == "not_ready"

    start_worker()
    status: dict[str, Any] = {}
    for _ in range(100):
        status = (
            await api.get(f"/api/user/data-export/{body['request_id']}", headers=owner.headers)
        ).json()
        if status["status"] == "ready":
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "ready", status
    download = await api.get(link)
    assert download.status_code == 200
    with zipfile.ZipFile(io.BytesIO(download.content)) as archive:
        users = json.loads(archive.read("tables/users.json"))
    assert [u["email"] for u in users] == [owner.email]
    again = await api.get(link)
    assert again.status_code == 410
    assert again.json()["error"]["code"] == "link_used"
    forged = await api.get(link.replace("token=", "token=x"))
    assert forged.status_code == 404


async def test_the_request_id_follows_the_job_into_the_worker(
    api: httpx.AsyncClient,
    owner: Account,
    counting_server: CountingServer,
    start_worker: StartWorker,
) -> None:
    key, request_id = unique_key("traced"), f"trace-{secrets.token_hex(8)}"
    workflow_id = await create_workflow(
        api, owner, [{"id": "call", "type": "http", "args": {"url": counting_server.url(key)}}]
    )
    worker = start_worker()
    accepted = await api.post(
        f"/api/workflows/{workflow_id}/execute",
        json={"input": {}},
        headers={**owner.headers, "X-Request-ID": request_id},
    )
    assert accepted.headers["x-request-id"] == request_id
    done = await wait_for_status(api, owner, accepted.json()["execution_id"])
    assert done["status"] == "succeeded"
    # The outgoing call carries it, and so does every worker log line about the job.
    assert counting_server.log.request_ids[key] == [request_id]
    job_lines = [line for line in worker.output().splitlines() if "step_succeeded" in line]
    assert job_lines
    assert all(f"request_id={request_id}" in line for line in job_lines), job_lines


async def test_an_export_taken_during_a_database_outage_waits_without_using_an_attempt(
    api: httpx.AsyncClient,
    owner: Account,
    start_worker: StartWorker,
    queue_runtime: Runtime,
    proxied_database: ProxiedDatabase,
) -> None:
    worker = start_worker(database_url=proxied_database.url)
    with proxied_database.proxy.outage():
        queued = await api.post("/api/user/data-export", headers=owner.headers)
        assert queued.status_code == 202, queued.text
        # The worker took the job (the only one on its queue), could not reach the database
        # and put the job back.
        await worker.wait_for_log("database_unavailable", containing="queue=gdpr")
    request_id = queued.json()["request_id"]
    status: dict[str, Any] = {}
    for _ in range(200):
        path = f"/api/user/data-export/{request_id}"
        status = (await api.get(path, headers=owner.headers)).json()
        if status["status"] == "ready":
            break
        await asyncio.sleep(0.1)
    assert status["status"] == "ready", status
    job = await queue_runtime.queues["gdpr"].queue.getJob(request_id)
    assert job is not None
    assert job.attemptsMade <= 1, job.attemptsMade  # the outage used up no attempt
