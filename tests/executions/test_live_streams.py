"""The live event streams (executions/streams.py): `GET /api/executions/{id}/events` with a
bearer token and `GET /ui/executions/{id}/events` with the cookie session, against the real API
in-process (its ASGI transport hands a response over once it has ended: enough for streams
that end), real `taskloom worker` processes, real PostgreSQL and Redis; the SIGTERM bound and
live delivery against a real `taskloom api` subprocess."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY

from taskloom.config import Settings
from taskloom.executions.live import LiveEvents, stream_key
from taskloom.redis import Keys, create_redis
from taskloom.runtime import Runtime
from taskloom.web import cookies
from tests.cli_support import deployment_env, serve_api
from tests.factories import Account, add_member, login, register
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.redis_cluster import on_node_of
from tests.servers import free_port
from tests.workers import StartWorker, create_workflow, execute, wait_for_status

RECHECK = 1.0
STEPS = [
    {"id": "a", "type": "transform", "args": {"value": 1}},
    {"id": "b", "type": "transform", "args": {"value": 2}, "needs": ["a"]},
    {
        "id": "each",
        "type": "transform",
        "for_each": "{{ [1, 2] }}",
        "args": {"value": "{{ item }}"},
        "needs": ["b"],
    },
    {"id": "c", "type": "transform", "args": {"value": 3}, "needs": ["each"]},
]
SLOW = [{"id": "w", "type": "wait", "args": {"for": "1h"}}]


@pytest.fixture(scope="module")
async def stream_runtime(queue_settings: Settings) -> AsyncIterator[Runtime]:
    settings = queue_settings.model_copy(
        update={"live_stream_recheck_seconds": RECHECK, "live_stream_heartbeat_seconds": 0.5}
    )
    async with opened_runtime(settings) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def stream_app(stream_runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(stream_runtime) as application:
        yield application


@pytest.fixture
async def client(stream_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(stream_app, ip="203.0.113.9") as http:
        yield http


@pytest.fixture
async def person(client: httpx.AsyncClient) -> AsyncIterator[Account]:
    account = await register(client, label="watcher", organization_name="Stream Org")
    yield account
    # Executions left queued (no worker ran them) are cancelled: the queue is the session's,
    # and admitted ones would hold its admission budget from later tests' executions. A new
    # sign-in, since a test may have ended the person's session.
    again = await login(client, account.email, org_id=account.org_id)
    for status in ("queued", "running", "waiting"):
        listed = await client.get(
            "/api/executions", params={"status": status}, headers=again.headers
        )
        for item in listed.json()["items"]:
            await client.post(f"/api/executions/{item['id']}/cancel", headers=again.headers)


def parse(body: str) -> list[dict[str, Any]]:
    """The events of a stream's body: id (None when absent), event, data; comments dropped."""
    events = []
    for block in body.split("\n\n"):
        fields: dict[str, Any] = {"id": None}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


async def stream(
    client: httpx.AsyncClient, path: str, within: float = 30, **kwargs: Any
) -> httpx.Response:
    async with asyncio.timeout(within):
        return await client.get(path, **kwargs)


async def test_a_multi_step_executions_events_arrive_in_order_and_the_stream_closes_at_its_end(
    client: httpx.AsyncClient, person: Account, start_worker: StartWorker
) -> None:
    workflow_id = await create_workflow(client, person, STEPS)
    execution_id = await execute(client, person, workflow_id)
    # Opened while the execution is still queued: it follows the execution live.
    watching = asyncio.ensure_future(
        stream(client, f"/api/executions/{execution_id}/events", headers=person.headers)
    )
    await asyncio.sleep(0.3)
    start_worker()
    response = await watching
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse(response.text)
    kinds = [(e["event"], e["data"].get("step_id"), e["data"]["status"]) for e in events]
    assert kinds[0] == ("execution", None, "running")
    assert kinds[-1] == ("execution", None, "succeeded")  # the stream ended on it
    steps = [(s, status) for kind, s, status in kinds if kind == "step"]
    assert steps.index(("a", "succeeded")) < steps.index(("b", "succeeded"))
    assert steps.index(("b", "succeeded")) < steps.index(("each", "running"))
    assert steps.index(("each", "running")) < steps.index(("c", "succeeded"))
    items = [e["data"] for e in events if e["data"].get("item_index") is not None]
    assert {(i["item_index"], i["status"]) for i in items} == {
        (0, "running"),
        (0, "succeeded"),
        (1, "running"),
        (1, "succeeded"),
    }
    assert all(e["id"] for e in events)  # every event carries its stream entry id
    assert len({e["id"] for e in events}) == len(events)


async def test_last_event_id_resumes_after_that_event_without_duplicates_or_gaps(
    client: httpx.AsyncClient, person: Account, start_worker: StartWorker
) -> None:
    start_worker()
    workflow_id = await create_workflow(client, person, STEPS)
    execution_id = await execute(client, person, workflow_id)
    await wait_for_status(client, person, execution_id)
    path = f"/api/executions/{execution_id}/events"
    full = parse((await stream(client, path, headers=person.headers)).text)
    assert full[-1]["data"] == {"status": "succeeded"}
    for cut in (1, 4, len(full) - 2):
        resumed = await stream(
            client, path, headers={**person.headers, "Last-Event-ID": full[cut]["id"]}
        )
        assert parse(resumed.text) == full[cut + 1 :]
    by_query = await stream(client, f"{path}?last_event_id={full[2]['id']}", headers=person.headers)
    assert parse(by_query.text) == full[3:]
    bad = await client.get(path, headers={**person.headers, "Last-Event-ID": "nope"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "bad_request"


async def test_last_event_id_resumes_a_followed_stream_through_the_shared_reader(
    client: httpx.AsyncClient, person: Account, stream_runtime: Runtime
) -> None:
    """A reconnect while the execution runs: the process's reader hands the stream what came
    after its Last-Event-ID, then what is published while it is open, each once."""
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)  # queued: the test publishes
    live = LiveEvents(stream_runtime.redis, stream_runtime.keys, uuid.UUID(execution_id))
    for status in ("running", "waiting"):
        await live.emit("step", {"step_id": "w", "status": status})
    first, second = await stream_runtime.redis.xrange(stream_key(stream_runtime.keys, execution_id))
    path = f"/api/executions/{execution_id}/events"
    resumed = asyncio.ensure_future(
        stream(client, path, headers={**person.headers, "Last-Event-ID": first[0]})
    )
    # Another stream of the same execution, from the start, shares the reader meanwhile.
    everything = asyncio.ensure_future(stream(client, path, headers=person.headers))
    await asyncio.sleep(0.5)
    await live.emit("token", {"step_id": "w", "text": "hello"})
    await live.emit("execution", {"status": "succeeded"})
    tail = parse((await resumed).text)
    assert [e["id"] for e in tail[:1]] == [second[0]]
    assert [(e["event"], e["data"].get("status")) for e in tail] == [
        ("step", "waiting"),
        ("token", None),
        ("execution", "succeeded"),
    ]
    assert len(parse((await everything).text)) == 4
    await stream_runtime.redis.delete(stream_key(stream_runtime.keys, execution_id))


async def test_an_expired_stream_of_a_finished_execution_sends_its_end_from_the_row(
    client: httpx.AsyncClient, person: Account, stream_runtime: Runtime, start_worker: StartWorker
) -> None:
    start_worker()
    workflow_id = await create_workflow(client, person, STEPS[:1])
    execution_id = await execute(client, person, workflow_id)
    await wait_for_status(client, person, execution_id)
    await stream_runtime.redis.delete(stream_key(stream_runtime.keys, execution_id))
    response = await stream(
        client, f"/api/executions/{execution_id}/events", headers=person.headers
    )
    assert parse(response.text) == [
        {"id": None, "event": "execution", "data": {"status": "succeeded"}}
    ]


async def test_another_organizations_execution_is_not_found_as_for_get(
    client: httpx.AsyncClient, person: Account
) -> None:
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)
    intruder = await register(client, label="intruder", organization_name="Other Org")
    for target in (execution_id, str(uuid.uuid4())):
        got = await client.get(f"/api/executions/{target}", headers=intruder.headers)
        events = await client.get(f"/api/executions/{target}/events", headers=intruder.headers)
        assert (events.status_code, events.json()["error"]["code"]) == (404, "not_found")
        assert events.json()["error"]["message"] == got.json()["error"]["message"]
        page = await client.get(
            f"/ui/executions/{target}/events",
            headers={"Cookie": f"{cookies.ACCESS_COOKIE}={intruder.access_token}"},
        )
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
    anonymous = await client.get(f"/api/executions/{execution_id}/events")
    assert anonymous.status_code == 401


async def test_a_revoked_api_key_closes_its_stream_within_the_recheck(
    client: httpx.AsyncClient, person: Account
) -> None:
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)  # queued: no worker runs it
    created = (
        await client.post("/auth/api-keys", json={"name": "watch"}, headers=person.headers)
    ).json()
    key = {"Authorization": f"Bearer {created['key']}"}
    timed = {"method": "GET", "path": "/api/executions/{execution_id}/events"}
    timed_before = REGISTRY.get_sample_value("http_request_duration_seconds_sum", timed) or 0.0
    watching = asyncio.ensure_future(
        stream(client, f"/api/executions/{execution_id}/events", headers=key)
    )
    await asyncio.sleep(RECHECK * 1.5)
    assert not watching.done()  # open while the key is valid, rechecked at least once
    revoked = await client.delete(f"/auth/api-keys/{created['id']}", headers=person.headers)
    assert revoked.status_code == 204
    started = time.monotonic()
    response = await asyncio.wait_for(watching, RECHECK + 3)
    assert time.monotonic() - started <= RECHECK + 1.5
    assert response.status_code == 200
    assert all(e["event"] != "execution" for e in parse(response.text))  # cut, not ended
    # Timed to its response's start, not its length: no slow request for the latency SLO.
    timed_after = REGISTRY.get_sample_value("http_request_duration_seconds_sum", timed)
    assert timed_after is not None
    assert timed_after - timed_before < 1.0


async def test_a_member_removed_from_the_organization_loses_their_stream_within_the_recheck(
    client: httpx.AsyncClient, person: Account
) -> None:
    viewer = await add_member(client, person, "viewer", label="leaver")
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)
    watching = asyncio.ensure_future(
        stream(client, f"/api/executions/{execution_id}/events", headers=viewer.headers)
    )
    await asyncio.sleep(RECHECK * 1.5)
    assert not watching.done()  # a viewer may watch
    removed = await client.delete(f"/api/members/{viewer.user_id}", headers=person.headers)
    assert removed.status_code == 204, removed.text
    response = await asyncio.wait_for(watching, RECHECK + 3)
    assert all(e["event"] != "execution" for e in parse(response.text))  # cut, not ended


async def test_a_logged_out_session_closes_its_page_stream_within_the_recheck(
    client: httpx.AsyncClient, person: Account
) -> None:
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)
    watching = asyncio.ensure_future(
        stream(
            client,
            f"/ui/executions/{execution_id}/events",
            headers={"Cookie": f"{cookies.ACCESS_COOKIE}={person.access_token}"},
        )
    )
    await asyncio.sleep(RECHECK * 1.5)
    assert not watching.done()
    out = await client.post("/auth/logout", headers=person.headers)
    assert out.status_code in (200, 204), out.text
    response = await asyncio.wait_for(watching, RECHECK + 3)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")


async def test_the_sixth_stream_of_a_person_is_refused_and_a_finished_one_frees_its_slot(
    client: httpx.AsyncClient, person: Account, stream_runtime: Runtime
) -> None:
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)
    path = f"/api/executions/{execution_id}/events"
    slots = stream_runtime.keys("live-streams", str(person.user_id))
    watching = [
        asyncio.ensure_future(stream(client, path, headers=person.headers)) for _ in range(5)
    ]
    async with asyncio.timeout(10):
        while await stream_runtime.redis.zcard(slots) < 5:  # noqa: ASYNC110 (another process's view)
            await asyncio.sleep(0.05)
    # Five streams, one Redis connection reading for all of them (the process's reader).
    node = on_node_of(stream_runtime.redis, stream_key(stream_runtime.keys, execution_id))
    readers = [
        c
        for c in await stream_runtime.redis.client_list(**node)
        if c["name"].endswith("live-reader") and not c["cmd"].startswith("cluster|")
    ]
    assert len(readers) == 1
    assert readers[0]["cmd"] in ("xread", "client|setname", "client|setinfo", "hello")
    sixth = await client.get(path, headers=person.headers)
    assert sixth.status_code == 429
    assert sixth.json()["error"]["code"] == "too_many_streams"
    assert "Retry-After" in sixth.headers
    # Cancelled while queued: no worker publishes its end, the recheck reads it from the row.
    cancelled = await client.post(f"/api/executions/{execution_id}/cancel", headers=person.headers)
    assert cancelled.status_code in (200, 202), cancelled.text
    for response in await asyncio.wait_for(asyncio.gather(*watching), RECHECK + 5):
        assert parse(response.text)[-1]["data"] == {"status": "cancelled"}
    assert await stream_runtime.redis.zcard(slots) == 0  # every slot given back


async def test_sigterm_ends_open_streams_within_the_shutdown_bound(
    queue_settings: Settings, tmp_path: Path
) -> None:
    """A real `taskloom api`: a stream opened over TCP gets an event the moment it is
    published, and SIGTERM with the stream open ends the process within
    SHUTDOWN_TIMEOUT_SECONDS + 2 s (uvicorn waits for open responses: the stream must end)."""
    port = free_port()
    timeout = 3
    env = deployment_env(queue_settings, SHUTDOWN_TIMEOUT_SECONDS=str(timeout))
    server = serve_api(env, port, tmp_path / "api.log")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
            owner = await register(api, label="sigterm", organization_name="Sigterm Org")
            workflow_id = await create_workflow(api, owner, SLOW)
            execution_id = await execute(api, owner, workflow_id)
            path = f"/api/executions/{execution_id}/events"
            async with api.stream("GET", path, headers=owner.headers) as response:
                assert response.status_code == 200
                lines = response.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                publisher = create_redis(queue_settings)
                live = LiveEvents(publisher, Keys.of(queue_settings), uuid.UUID(execution_id))
                await live.emit("step", {"step_id": "w", "status": "running"})
                await publisher.aclose()
                async with asyncio.timeout(5):
                    seen = []
                    while not any(line.startswith("data: ") for line in seen):
                        seen.append(await anext(lines))
                assert seen[-1] == 'data: {"step_id":"w","status":"running"}'
                signalled = time.monotonic()
                server.send_signal(signal.SIGTERM)
                async with asyncio.timeout(timeout + 2):
                    async for _ in lines:
                        pass  # the server ends the stream
        await asyncio.to_thread(server.wait, timeout + 2)
        assert time.monotonic() - signalled <= timeout + 2
        assert server.returncode == 0, (tmp_path / "api.log").read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_the_page_of_an_unfinished_execution_follows_its_events_with_a_script(
    client: httpx.AsyncClient, person: Account
) -> None:
    workflow_id = await create_workflow(client, person, SLOW)
    execution_id = await execute(client, person, workflow_id)
    session = {"Cookie": f"{cookies.ACCESS_COOKIE}={person.access_token}"}
    page = await client.get(f"/ui/executions/{execution_id}", headers=session)
    assert page.status_code == 200
    html = page.text
    assert '<script src="/ui/static/execution.js?v=' in html
    assert f'data-live-events="/ui/executions/{execution_id}/events"' in html
    # Without JavaScript the page still reloads itself; with it, only the script updates it.
    head = html.split("</head>")[0]
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in head
    assert head.count('http-equiv="refresh"') == 1
    assert 'data-live-status><span class="badge badge-queued">' in html
    script = await client.get("/ui/static/execution.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "new EventSource(panel.dataset.liveEvents)" in script.text
    assert "innerHTML" not in script.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    cancelled = await client.post(f"/api/executions/{execution_id}/cancel", headers=person.headers)
    assert cancelled.status_code in (200, 202)
    finished = await client.get(f"/ui/executions/{execution_id}", headers=session)
    assert "execution.js" not in finished.text
    assert "data-live-events" not in finished.text
