"""The outbound address guard on the SDKs' client (httpx2, installed by `net.guarded_transport2`):
an organization's AI base URL and an MCP server URL on loopback are refused at connect time,
with the `*_target_not_allowed` codes, and not one request reaches the server. The session app
and runtime used here have no OUTBOUND_ALLOWED_HOSTS (every other AI/MCP test allows 127.0.0.1),
so these tests fail if the guard stops being installed in httpx2 or stops refusing loopback."""

from __future__ import annotations

import httpx
import pytest

from taskloom.ai.executor import AiCall, AiStepError, run_ai
from taskloom.runtime import Runtime
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool
from tests.factories import Account, register
from tests.fakes.ai_apis import FakeAnthropic, FakeOpenAI
from tests.fakes.mcp_server import RunningMcpServer
from tests.tools.conftest import connect


@pytest.fixture
async def owner(client: httpx.AsyncClient, runtime: Runtime) -> Account:
    assert runtime.settings.outbound_allowed_hosts == ""  # the premise of every test here
    return await register(client, label="guarded", organization_name="Guarded Org")


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
async def test_an_organizations_ai_base_url_on_loopback_is_refused_and_never_reached(
    client: httpx.AsyncClient,
    runtime: Runtime,
    owner: Account,
    provider: str,
    request: pytest.FixtureRequest,
) -> None:
    fake: FakeAnthropic | FakeOpenAI = request.getfixturevalue(f"fake_{provider}")
    await connect(client, owner, provider, fake.base_url, {"api_key": fake.api_key})
    fake.reply("never sent")
    assert owner.org_id is not None
    call = AiCall(
        org_id=owner.org_id,
        user_id=owner.user_id,
        execution_id=None,
        step_id="s1",
        prompt="Hello",
        provider=provider,
    )
    with pytest.raises(AiStepError) as refused:
        await run_ai(runtime, call)
    assert (refused.value.code, refused.value.retryable) == ("ai_target_not_allowed", False)
    assert "127.0.0.1 is a loopback address" in refused.value.message
    assert fake.requests == []


async def test_an_mcp_server_on_loopback_is_refused_and_never_reached(
    client: httpx.AsyncClient, runtime: Runtime, owner: Account, mcp_server: RunningMcpServer
) -> None:
    created = await connect(
        client, owner, "mcp", mcp_server.url, {"bearer_token": "test-mcp-token"}, name="notes"
    )
    path = f"/api/connections/{created['id']}"
    tested = await client.post(f"{path}/test", headers=owner.headers)
    assert tested.status_code == 200, tested.text
    assert tested.json()["ok"] is False
    assert tested.json()["error"]["code"] == "target_not_allowed"
    listed = await client.get(f"{path}/tools", headers=owner.headers)
    assert listed.status_code == 409, listed.text
    assert listed.json()["error"]["code"] == "target_not_allowed"
    assert owner.org_id is not None
    with pytest.raises(ToolError) as refused:
        await call_tool(
            runtime,
            org_id=owner.org_id,
            connection_ref="notes",
            tool_name="search_notes",
            args={"query": "x"},
        )
    assert (refused.value.code, refused.value.retryable) == ("target_not_allowed", False)
    assert mcp_server.http_requests == []
    assert mcp_server.methods == []
