"""An `http` step may use an `http` connection (a base URL and auth headers, stored encrypted)
instead of inline headers: the headers are added when the request leaves, the request may not
leave the base URL, and the header values never come back in what the step records."""

from __future__ import annotations

import httpx

from taskloom.runtime import Runtime
from tests.factories import add_member, register
from tests.gdpr.traces import scan_binary, scan_columns
from tests.secrets.conftest import EchoServer
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

TOKEN = "conn-token-5f3a9c1e77"


async def test_an_http_step_sends_through_an_http_connection_and_never_records_its_headers(
    api: httpx.AsyncClient,
    queue_runtime: Runtime,
    start_worker: StartWorker,
    echo_server: EchoServer,
) -> None:
    owner = await register(api, label="http-conn", organization_name="Http Connection Org")
    created = await api.post(
        "/api/connections",
        json={
            "provider": "http",
            "name": "echo-api",
            "base_url": echo_server.url("/api/v1"),
            "credentials": {"headers": {"Authorization": f"Bearer {TOKEN}"}},
        },
        headers=owner.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["credential_fields"] == ["headers"]
    assert TOKEN not in created.text
    no_url = await api.post(
        "/api/connections",
        json={"provider": "http", "name": "no-url", "credentials": {"headers": {}}},
        headers=owner.headers,
    )
    assert no_url.status_code == 422
    member = await add_member(api, owner, role="member")
    workflow_id = await create_workflow(
        api,
        member,
        [
            {
                "id": "call",
                "type": "http",
                "args": {
                    "connection": "echo-api",
                    "method": "POST",
                    "url": "/items",
                    "query": {"page": 2},
                    "headers": {"Authorization": "Bearer member-chosen"},
                    "json": {"title": "hello"},
                },
            },
            {
                "id": "escape",
                "type": "http",
                "continue_on_error": True,
                "args": {"connection": "echo-api", "url": "../../elsewhere"},
            },
            {
                "id": "absolute",
                "type": "http",
                "continue_on_error": True,
                "args": {"connection": "echo-api", "url": "https://example.com/api/v1/x"},
            },
        ],
    )
    start_worker()
    done = await wait_for_status(api, member, await execute(api, member, workflow_id))
    assert done["status"] == "succeeded", done
    [sent] = echo_server.requests_to("/api/v1/items")
    assert sent.path == "/api/v1/items?page=2"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"  # the connection's own wins
    assert echo_server.requests_to("/elsewhere") == []
    steps = {step["step_id"]: step for step in done["steps"]}
    assert steps["call"]["output"]["body"]["authorization"] == "[connection:echo-api]"
    assert steps["call"]["output"]["body"]["body"] == {"title": "hello"}
    for refused in ("escape", "absolute"):
        assert steps[refused]["error"]["code"] == "url_outside_connection"
    assert await scan_columns(queue_runtime, [TOKEN]) == []
    assert await scan_binary(queue_runtime, [TOKEN]) == []

    # An admin's connection test sends the headers to the base URL.
    tested = await api.post(f"/api/connections/{created.json()['id']}/test", headers=owner.headers)
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is True
