"""Tool calls reuse their connection's kept-alive client (taskloom/outbound_pool.py): the fake
APIs and the real MCP server count the TCP connections they accept. New credentials or a
deleted connection never reuse the old client, and two organizations never share one."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import httpx

from taskloom.outbound_pool import OutboundPool
from taskloom.runtime import Runtime
from taskloom.tools.executor import call_tool
from tests.factories import Account, register
from tests.fakes.mcp_server import RunningMcpServer
from tests.fakes.tool_apis import FakeGitHub
from tests.tools.conftest import connect

REPO = {"owner": "octocat", "repo": "hello-world"}


async def _call(runtime: Runtime, account: Account, ref: str, tool: str, **args: Any) -> Any:
    assert account.org_id is not None
    return await call_tool(
        runtime, org_id=account.org_id, connection_ref=ref, tool_name=tool, args=dict(args)
    )


async def _eventually(check: Any, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.02)


async def test_repeated_calls_of_a_connection_go_over_one_tcp_connection(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    for n in range(5):
        await _call(tools_runtime, admin, "github", "createIssue", title=f"Bug {n}", **REPO)
    assert len(fake_github.requests) == 5
    assert fake_github.connections == 1


async def test_with_reuse_off_every_call_opens_a_connection(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    unpooled = dataclasses.replace(tools_runtime, outbound=OutboundPool(max_clients=0))
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    for n in range(3):
        await _call(unpooled, admin, "github", "createIssue", title=f"Bug {n}", **REPO)
    assert fake_github.connections == 3


async def test_new_credentials_close_the_old_client_and_the_next_call_carries_them(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(
        tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token}
    )
    await _call(tools_runtime, admin, "github", "createIssue", title="Before", **REPO)
    assert (fake_github.connections, fake_github.closed) == (1, 0)

    fake_github.token = "ghp_rotatedtoken000000000000000000000000"
    changed = await tools_api.patch(
        f"/api/connections/{created['id']}",
        json={"credentials": {"token": fake_github.token}},
        headers=admin.headers,
    )
    assert changed.status_code == 200, changed.text
    # This process (the API's, which here is also the caller's) closed the old client at once.
    await _eventually(lambda: fake_github.closed == 1)

    await _call(tools_runtime, admin, "github", "createIssue", title="After", **REPO)
    assert fake_github.connections == 2
    assert fake_github.requests[-1].headers["authorization"].endswith(fake_github.token)


async def test_a_process_that_missed_the_change_never_reuses_the_old_client(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    """Another worker's pool is not told about an update: the credentials' fingerprint in the
    key sends its next call to a new client, and the old one idles out."""
    worker = dataclasses.replace(tools_runtime, outbound=OutboundPool(max_clients=8))
    created = await connect(
        tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token}
    )
    await _call(worker, admin, "github", "createIssue", title="Before", **REPO)
    fake_github.token = "ghp_rotatedtoken111111111111111111111111"
    changed = await tools_api.patch(
        f"/api/connections/{created['id']}",
        json={"credentials": {"token": fake_github.token}},
        headers=admin.headers,
    )
    assert changed.status_code == 200, changed.text
    await _call(worker, admin, "github", "createIssue", title="After", **REPO)
    assert fake_github.connections == 2
    assert fake_github.requests[-1].headers["authorization"].endswith(fake_github.token)
    assert worker.outbound.size == 2  # the old client waits for its idle timeout
    await worker.outbound.aclose()
    await _eventually(lambda: fake_github.closed == 2)


async def test_deleting_a_connection_closes_its_client(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(
        tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token}
    )
    await _call(tools_runtime, admin, "github", "createIssue", title="Once", **REPO)
    deleted = await tools_api.delete(f"/api/connections/{created['id']}", headers=admin.headers)
    assert deleted.status_code == 204
    await _eventually(lambda: fake_github.closed == 1)
    assert fake_github.connections == 1


async def test_two_organizations_with_the_same_url_and_token_never_share_a_connection(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    other = await register(tools_api, label="reuse-other", organization_name="Other Org")
    for account in (admin, other):
        await connect(
            tools_api, account, "github", fake_github.base_url, {"token": fake_github.token}
        )
    for n in range(2):
        for account in (admin, other):
            await _call(tools_runtime, account, "github", "createIssue", title=f"{n}", **REPO)
    assert fake_github.connections == 2


async def test_mcp_calls_reuse_the_connection_but_open_a_session_each(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    mcp_server: RunningMcpServer,
) -> None:
    await connect(
        tools_api, admin, "mcp", mcp_server.url, {"bearer_token": "test-mcp-token"}, name="notes"
    )
    for n in range(3):
        await _call(tools_runtime, admin, "notes", "add_note", title=f"n{n}")
    pooled = mcp_server.connections
    requests = len(mcp_server.http_requests)

    unpooled = dataclasses.replace(tools_runtime, outbound=OutboundPool(max_clients=0))
    for n in range(3):
        await _call(unpooled, admin, "notes", "add_note", title=f"u{n}")
    assert len(mcp_server.http_requests) == 2 * requests  # the same exchanges either way
    assert pooled == 1
    assert mcp_server.connections - pooled == 3  # one client per call, for both its sessions
    # Sessions are not reused: every call negotiated its own (see providers/mcp.py).
    assert [name for name, _ in mcp_server.calls] == ["add_note"] * 6
