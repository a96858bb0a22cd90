"""Tool calls through the executor: a Redis cache for reads, a circuit breaker per connection,
exactly one metric sample per call, MCP servers alike."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from prometheus_client import REGISTRY

from taskloom.breakers import BREAKERS
from taskloom.runtime import Runtime
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool
from tests.factories import Account, register
from tests.fakes.mcp_server import RunningMcpServer
from tests.fakes.tool_apis import FakeGitHub
from tests.tools.conftest import connect

REPO = {"owner": "octocat", "repo": "hello-world"}


def _sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def _call(runtime: Runtime, account: Account, ref: str, tool: str, **args: object) -> dict:
    assert account.org_id is not None
    return await call_tool(
        runtime, org_id=account.org_id, connection_ref=ref, tool_name=tool, args=dict(args)
    )


async def test_a_repeated_read_is_served_from_the_cache_until_a_write(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    hits = _sample("tool_cache_requests_total", provider="github", tool="getIssues", result="hit")
    first = await _call(tools_runtime, admin, "github", "getIssues", **REPO)
    second = await _call(tools_runtime, admin, "github", "getIssues", **REPO)
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["result"] == first["result"]
    assert len([r for r in fake_github.requests if r.method == "GET"]) == 1
    assert (
        _sample("tool_cache_requests_total", provider="github", tool="getIssues", result="hit")
        == hits + 1
    )

    created = await _call(tools_runtime, admin, "github", "createIssue", title="Bug", **REPO)
    assert created["cached"] is False
    after = await _call(tools_runtime, admin, "github", "getIssues", **REPO)
    assert after["cached"] is False  # the write invalidated the connection's cache
    assert [i["title"] for i in after["result"]["issues"]] == ["Bug"]


async def test_writes_are_never_cached(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    for _ in range(2):
        result = await _call(tools_runtime, admin, "github", "createIssue", title="Same", **REPO)
        assert result["cached"] is False
    assert len([r for r in fake_github.requests if r.method == "POST"]) == 2


async def test_different_arguments_and_connections_do_not_share_cache_entries(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    other = await register(tools_api, label="other", organization_name="Other")
    await connect(tools_api, other, "github", fake_github.base_url, {"token": fake_github.token})
    await _call(tools_runtime, admin, "github", "getIssues", **REPO)
    assert not (await _call(tools_runtime, admin, "github", "getIssues", state="closed", **REPO))[
        "cached"
    ]
    assert not (await _call(tools_runtime, other, "github", "getIssues", **REPO))["cached"]


async def test_one_organizations_failing_connection_opens_only_its_own_breaker(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    fake_github: FakeGitHub,
) -> None:
    bad = await connect(tools_api, admin, "github", fake_github.base_url, {"token": "revoked"})
    other = await register(tools_api, label="other", organization_name="Other")
    await connect(tools_api, other, "github", fake_github.base_url, {"token": fake_github.token})
    for _ in range(3):  # the threshold in these tests
        with pytest.raises(ToolError) as failure:
            await _call(tools_runtime, admin, "github", "createIssue", title="x", **REPO)
        assert failure.value.code == "github_http_401"
    asked = len(fake_github.requests)
    with pytest.raises(ToolError) as refused:
        await _call(tools_runtime, admin, "github", "createIssue", title="x", **REPO)
    assert (refused.value.code, refused.value.retryable) == ("circuit_open", True)
    assert len(fake_github.requests) == asked  # failed fast, nothing sent
    assert _sample("circuit_breaker_state", name=f"tool:{bad['id']}") == 2

    ok = await _call(tools_runtime, other, "github", "createIssue", title="fine", **REPO)
    assert ok["result"]["title"] == "fine"

    circuits = await tools_api.get("/health/circuits", headers=admin.headers)
    assert circuits.status_code == 503
    assert f"tool:{bad['id']}" in circuits.text
    BREAKERS.remove(f"tool:{bad['id']}")
    assert (await tools_api.get("/health/circuits")).status_code == 200


async def test_an_open_breaker_lets_one_trial_through_after_the_cool_down(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    created = await connect(
        tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token}
    )
    fake_github.fail_always(502)
    for _ in range(3):
        with pytest.raises(ToolError) as failure:
            await _call(tools_runtime, admin, "github", "createIssue", title="x", **REPO)
        assert failure.value.retryable
    fake_github.recover()
    with pytest.raises(ToolError, match="circuit"):
        await _call(tools_runtime, admin, "github", "createIssue", title="x", **REPO)
    await asyncio.sleep(1.1)  # BREAKER_RESET_SECONDS in these tests
    ok = await _call(tools_runtime, admin, "github", "createIssue", title="after", **REPO)
    assert ok["result"]["title"] == "after"
    assert _sample("circuit_breaker_state", name=f"tool:{created['id']}") == 0


async def test_each_call_moves_the_tool_metrics_by_exactly_one(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    labels = {"provider": "github", "tool": "createIssue"}
    ok, failed = (
        _sample("mcp_tool_calls_total", **labels, success="true"),
        _sample("mcp_tool_calls_total", **labels, success="false"),
    )
    count = _sample("mcp_tool_call_duration_seconds_count", **labels)
    await _call(tools_runtime, admin, "github", "createIssue", title="one", **REPO)
    fake_github.fail_next(1, 422)
    with pytest.raises(ToolError):
        await _call(tools_runtime, admin, "github", "createIssue", title="two", **REPO)
    assert _sample("mcp_tool_calls_total", **labels, success="true") == ok + 1
    assert _sample("mcp_tool_calls_total", **labels, success="false") == failed + 1
    assert _sample("mcp_tool_call_duration_seconds_count", **labels) == count + 2


async def test_bad_arguments_fail_before_anything_is_sent(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    await connect(tools_api, admin, "github", fake_github.base_url, {"token": fake_github.token})
    with pytest.raises(ToolError) as failure:
        await _call(tools_runtime, admin, "github", "createIssue", titel="typo", **REPO)
    assert failure.value.code == "invalid_args"
    with pytest.raises(ToolError) as unknown:
        await _call(tools_runtime, admin, "github", "mergeEverything", **REPO)
    assert unknown.value.code == "unknown_tool"
    with pytest.raises(ToolError) as missing:
        await _call(tools_runtime, admin, "nope", "getIssues", **REPO)
    assert missing.value.code == "no_connection"
    assert fake_github.requests == []


async def test_an_mcp_servers_read_only_tool_is_cached_and_its_write_invalidates(
    tools_runtime: Runtime,
    tools_api: httpx.AsyncClient,
    admin: Account,
    mcp_server: RunningMcpServer,
) -> None:
    created = await connect(
        tools_api, admin, "mcp", mcp_server.url, {"bearer_token": "test-mcp-token"}, name="notes"
    )
    tools = await tools_api.get(f"/api/connections/{created['id']}/tools", headers=admin.headers)
    assert tools.status_code == 200, tools.text
    read_only = {t["name"]: t["read_only"] for t in tools.json()}
    assert read_only["search_notes"] is True
    assert read_only["add_note"] is False

    await _call(tools_runtime, admin, "notes", "search_notes", query="x")
    again = await _call(tools_runtime, admin, "notes", "search_notes", query="x")
    assert again["cached"] is True
    await _call(tools_runtime, admin, "notes", "add_note", title="x marks the spot")
    fresh = await _call(tools_runtime, admin, "notes", "search_notes", query="x")
    assert fresh["cached"] is False
    assert "x marks the spot" in str(fresh["result"])
    assert [name for name, _ in mcp_server.calls] == ["search_notes", "add_note", "search_notes"]


async def test_a_connection_of_another_organization_cannot_be_named_by_id(
    tools_runtime: Runtime, tools_api: httpx.AsyncClient, admin: Account, fake_github: FakeGitHub
) -> None:
    theirs = await register(tools_api, label="theirs", organization_name="Theirs")
    created = await connect(
        tools_api, theirs, "github", fake_github.base_url, {"token": fake_github.token}
    )
    with pytest.raises(ToolError) as failure:
        await _call(tools_runtime, admin, created["id"], "getIssues", **REPO)
    assert failure.value.code == "no_connection"
    assert uuid.UUID(created["id"])
