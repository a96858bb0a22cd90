"""Secrets in real runs: a real worker resolves `{{ secrets.NAME }}` at run time, sends it only to
hosts the secret allows, and no value it resolved is left anywhere: not in any database column
(text, JSON or binary), not in Redis (jobs, failure reasons, events), not in the worker's log,
not in webhook payloads, audit rows or a GDPR export."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable

import httpx

from taskloom.runtime import Runtime
from tests.factories import Account, add_member, register
from tests.fakes.ai_apis import FakeAnthropic
from tests.fakes.tool_apis import FakeGitHub
from tests.gdpr.traces import scan_binary, scan_columns, scan_redis
from tests.secrets.conftest import EchoServer
from tests.workers import StartWorker, create_workflow, execute, wait_for_status


async def _secret(
    api: httpx.AsyncClient, admin: Account, name: str, value: str, hosts: list[str]
) -> None:
    created = await api.post(
        "/api/secrets",
        json={"name": name, "value": value, "allowed_hosts": hosts},
        headers=admin.headers,
    )
    assert created.status_code == 201, created.text


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_planted_secret_is_sent_where_allowed_and_left_nowhere(
    api: httpx.AsyncClient,
    queue_runtime: Runtime,
    start_worker: StartWorker,
    echo_server: EchoServer,
) -> None:
    value = f"tl-planted-{secrets.token_hex(12)}"
    owner = await register(api, label="leak-owner", organization_name="Leak Scan Org")
    await _secret(api, owner, "PLANTED", value, ["127.0.0.1"])
    hook = await api.post(
        "/api/webhooks",
        json={"url": echo_server.url("/hook"), "events": ["execution.succeeded"]},
        headers=owner.headers,
    )
    assert hook.status_code == 201, hook.text
    child = await create_workflow(
        api, owner, [{"id": "got", "type": "transform", "args": {"value": "{{ input }}"}}], "child"
    )
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "echo",
                "type": "http",
                "args": {
                    "method": "POST",
                    "url": echo_server.url("/echo"),
                    "headers": {"Authorization": "Bearer {{ secrets.PLANTED }}"},
                    "json": {"sent": "{{ secrets.PLANTED }}", "note": "a {{ secrets.PLANTED }} b"},
                },
            },
            {
                "id": "direct",
                "type": "transform",
                "needs": ["echo"],
                "args": {"value": "token={{ secrets.PLANTED }}"},
            },
            {
                "id": "tolerated",
                "type": "transform",
                "needs": ["echo"],
                "when": "{{ secrets.PLANTED }}",  # not a boolean: an error quoting the value
                "continue_on_error": True,
                "args": {"value": 1},
            },
            {
                "id": "handoff",
                "type": "workflow",
                "needs": ["echo"],
                "args": {"workflow": child, "input": {"passed": "{{ secrets.PLANTED }}"}},
            },
        ],
        output={
            "echoed": "{{ steps.echo.output.body }}",
            "direct": "{{ steps.direct.output }}",
            "child": "{{ steps.handoff.output }}",
            "plain": "{{ secrets.PLANTED }}",
        },
    )
    worker = start_worker()
    execution_id = await execute(api, owner, workflow_id, {"greeting": "hi"})
    done = await wait_for_status(api, owner, execution_id)
    assert done["status"] == "succeeded", done

    # The value went where it was allowed, exactly as written.
    [sent] = echo_server.requests_to("/echo")
    assert sent.headers["Authorization"] == f"Bearer {value}"
    assert json.loads(sent.body) == {"sent": value, "note": f"a {value} b"}

    # Everything recorded says [secret:PLANTED] instead.
    marker = "[secret:PLANTED]"
    output = done["output"]
    assert output["echoed"]["authorization"] == f"Bearer {marker}"
    assert output["echoed"]["body"] == {"sent": marker, "note": f"a {marker} b"}
    assert output["direct"] == f"token={marker}"
    assert output["plain"] == marker
    steps = {step["step_id"]: step for step in done["steps"]}
    assert steps["echo"]["input"]["json"] == {"sent": marker, "note": f"a {marker} b"}
    assert steps["echo"]["input"]["headers"]["Authorization"] == "***"  # the older key rule
    assert steps["tolerated"]["status"] == "failed"
    assert marker in steps["tolerated"]["error"]["message"]
    children = await api.get(
        "/api/executions", params={"workflow_id": child}, headers=owner.headers
    )
    assert children.status_code == 200, children.text
    [child_run] = children.json()["items"]
    child_detail = await wait_for_status(api, owner, child_run["id"])
    assert child_detail["input"] == {"passed": marker}

    # A second execution fails because of the value: its error and its job's failure reason.
    failing = await create_workflow(
        api,
        owner,
        [{"id": "bad", "type": "transform", "when": "{{ secrets.PLANTED }}", "args": {"value": 1}}],
        "failing",
    )
    failed_id = await execute(api, owner, failing)
    failed = await wait_for_status(api, owner, failed_id)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "when_not_boolean"
    assert marker in failed["error"]["message"]

    # Webhook payloads were delivered (and stored) without it.
    async def delivered() -> bool:
        return any(execution_id.encode() in h.body for h in echo_server.requests_to("/hook"))

    await _eventually(delivered)
    hooks = echo_server.requests_to("/hook")
    assert all(value.encode() not in h.body for h in hooks)

    # A GDPR export of the person who ran it, both streamed and queued.
    streamed = await api.get("/api/user/data-export", headers=owner.headers)
    assert streamed.status_code == 200
    assert execution_id in streamed.text
    assert value not in streamed.text
    queued = await api.post("/api/user/data-export", headers=owner.headers)
    assert queued.status_code == 202, queued.text
    request_id = queued.json()["request_id"]

    async def exported() -> bool:
        state = await api.get(f"/api/user/data-export/{request_id}", headers=owner.headers)
        return bool(state.json()["status"] not in ("queued", "running"))

    await _eventually(exported)
    state = await api.get(f"/api/user/data-export/{request_id}", headers=owner.headers)
    assert state.json()["status"] == "ready", state.text

    # Nowhere: every column of every table, binary ones and export archives unzipped, every
    # Redis key (jobs, failure reasons, event streams), the worker's log.
    assert await scan_columns(queue_runtime, [value]) == []
    assert await scan_binary(queue_runtime, [value]) == []
    assert await scan_redis(queue_runtime, [value]) == []
    assert value not in worker.output()
    # ... while the scans do find what is there.
    assert await scan_columns(queue_runtime, [marker]) != []


async def test_a_member_cannot_send_a_secret_to_a_host_of_their_own(
    api: httpx.AsyncClient, start_worker: StartWorker, echo_server: EchoServer
) -> None:
    value = f"tl-exfil-{secrets.token_hex(12)}"
    owner = await register(api, label="exfil-owner", organization_name="Exfiltration Org")
    await _secret(api, owner, "DEPLOY_KEY", value, ["127.0.0.1"])
    member = await add_member(api, owner, role="member")
    # `localhost` is the same server, but not a host the secret allows.
    attacker = echo_server.url("/exfil").replace("127.0.0.1", "localhost")
    workflow_id = await create_workflow(
        api,
        member,
        [
            {
                "id": "send",
                "type": "http",
                "args": {
                    "method": "POST",
                    "url": attacker,
                    "json": {"k": "{{ secrets.DEPLOY_KEY }}"},
                },
            }
        ],
        "exfiltrate",
    )
    # Laundered through another step's output: it arrives redacted.
    laundered_id = await create_workflow(
        api,
        member,
        [
            {"id": "relay", "type": "transform", "args": {"value": "{{ secrets.DEPLOY_KEY }}"}},
            {
                "id": "send",
                "type": "http",
                "needs": ["relay"],
                "args": {
                    "method": "POST",
                    "url": attacker + "-laundered",
                    "json": {"k": "{{ steps.relay.output }}"},
                },
            },
        ],
        "launder",
    )
    start_worker()
    refused_id = await execute(api, member, workflow_id)
    refused = await wait_for_status(api, member, refused_id)
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "secret_host_not_allowed"
    assert refused["error"]["details"] == {"host": "localhost", "secrets": ["DEPLOY_KEY"]}
    assert echo_server.requests_to("/exfil") == []  # nothing was sent, not even a connection

    laundered = await wait_for_status(api, member, await execute(api, member, laundered_id))
    assert laundered["status"] == "succeeded", laundered["error"]
    [arrived] = echo_server.requests_to("/exfil-laundered")
    assert json.loads(arrived.body) == {"k": "[secret:DEPLOY_KEY]"}
    assert value.encode() not in arrived.body


async def test_a_secret_with_no_allowed_hosts_is_sent_nowhere_and_an_unknown_one_fails(
    api: httpx.AsyncClient, start_worker: StartWorker, echo_server: EchoServer
) -> None:
    owner = await register(api, label="closed-owner", organization_name="Closed Org")
    await _secret(api, owner, "NOWHERE", "tl-nowhere-value", [])
    nowhere = await create_workflow(
        api,
        owner,
        [
            {
                "id": "send",
                "type": "http",
                "args": {"url": echo_server.url("/nowhere?k={{ secrets.NOWHERE }}")},
            }
        ],
        "nowhere",
    )
    unknown = await create_workflow(
        api,
        owner,
        [{"id": "use", "type": "transform", "args": {"value": "{{ secrets.NOT_THERE }}"}}],
        "unknown",
    )
    start_worker()
    closed = await wait_for_status(api, owner, await execute(api, owner, nowhere))
    assert closed["error"]["code"] == "secret_host_not_allowed"
    assert echo_server.requests_to("/nowhere") == []
    missing = await wait_for_status(api, owner, await execute(api, owner, unknown))
    assert missing["status"] == "failed"
    assert missing["error"]["code"] == "secret_not_found"
    assert missing["error"]["details"] == {"names": ["NOT_THERE"]}
    assert missing["error"]["step_id"] == "use"


async def test_tool_and_ai_steps_carrying_a_secret_reach_only_hosts_it_allows(
    api: httpx.AsyncClient,
    start_worker: StartWorker,
    fake_github: FakeGitHub,
    fake_anthropic: FakeAnthropic,
) -> None:
    owner = await register(api, label="tool-secret", organization_name="Tool Secret Org")
    await _secret(api, owner, "ELSEWHERE", "tl-tool-value-42", ["api.github.com"])
    for body in (
        {
            "provider": "github",
            "name": "gh",
            "base_url": fake_github.base_url,
            "credentials": {"token": fake_github.token},
            "config": {"owner": "octocat", "repo": "hello-world"},
        },
        {
            "provider": "anthropic",
            "name": "claude",
            "base_url": fake_anthropic.base_url,
            "credentials": {"api_key": fake_anthropic.api_key},
        },
    ):
        created = await api.post("/api/connections", json=body, headers=owner.headers)
        assert created.status_code == 201, created.text
    workflow_id = await create_workflow(
        api,
        owner,
        [
            {
                "id": "issue",
                "type": "tool",
                "needs": [],
                "continue_on_error": True,
                "args": {
                    "connection": "gh",
                    "tool": "createIssue",
                    "args": {"title": "{{ secrets.ELSEWHERE }}"},
                },
            },
            {
                "id": "ask",
                "type": "ai",
                "needs": [],
                "continue_on_error": True,
                "args": {"category": "quick", "prompt": "Say {{ secrets.ELSEWHERE }}"},
            },
        ],
    )
    start_worker()
    done = await wait_for_status(api, owner, await execute(api, owner, workflow_id))
    steps = {step["step_id"]: step for step in done["steps"]}
    for step_id in ("issue", "ask"):
        assert steps[step_id]["status"] == "failed"
        assert steps[step_id]["error"]["code"] == "secret_host_not_allowed", steps[step_id]
        assert steps[step_id]["error"]["details"]["host"] == "127.0.0.1"
    assert fake_github.connections == 0
    assert fake_anthropic.requests == []
