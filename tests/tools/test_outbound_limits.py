"""A connection's server cannot hold a worker or an API process, nor fill its memory: a
connection test and a tool call end at TOOL_TIMEOUT_SECONDS however slowly the server drips its
answer (httpx's own timeout is per read), and at most 4 MiB of an answer is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskloom.config import Settings
from taskloom.runtime import Runtime
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool
from taskloom.tools.providers._rest import MAX_RESPONSE_BYTES
from tests.factories import Account, register
from tests.fakes.hostile import HUGE_BYTES, HostileServer
from tests.in_process import asgi_client, opened_runtime, running_app
from tests.tools.conftest import TOOL_TEST_SETTINGS, connect

DEADLINE = 1.5
REPO = {"owner": "octocat", "repo": "hello-world"}


@pytest.fixture(scope="module")
async def fast_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    update: dict[str, Any] = {**TOOL_TEST_SETTINGS, "tool_timeout_seconds": DEADLINE}
    async with opened_runtime(settings.model_copy(update=update)) as runtime:
        yield runtime


@pytest.fixture(scope="module")
async def fast_app(fast_runtime: Runtime) -> AsyncIterator[FastAPI]:
    async with running_app(fast_runtime) as application:
        yield application


@pytest.fixture
async def api(fast_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(fast_app, ip="203.0.113.9") as client:
        yield client


@pytest.fixture
async def owner(api: httpx.AsyncClient) -> Account:
    return await register(api, label="limits", organization_name="Limits Org")


async def _test_connection(api: httpx.AsyncClient, owner: Account, url: str) -> dict[str, Any]:
    created = await connect(api, owner, "github", url, {"token": "t"}, config=REPO)
    async with asyncio.timeout(4 * DEADLINE):  # failing, not hanging, if the deadline broke
        tested = await api.post(f"/api/connections/{created['id']}/test", headers=owner.headers)
    assert tested.status_code == 200, tested.text
    result: dict[str, Any] = tested.json()
    return result


async def test_a_connection_test_against_a_dripping_server_ends_at_the_tool_timeout(
    api: httpx.AsyncClient, owner: Account
) -> None:
    with HostileServer("drip") as server:
        started = time.monotonic()
        result = await _test_connection(api, owner, server.url)
        elapsed = time.monotonic() - started
        assert server.body_bytes_sent >= 2  # it was dripping when the test was cut
    assert result["ok"] is False
    assert result["error"] == {
        "code": "tool_timeout",
        "message": f"github did not answer within {DEADLINE:g} s",
    }
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + 1.0, elapsed
    assert DEADLINE * 1000 - 100 <= result["latency_ms"] <= DEADLINE * 1000 + 1000


async def test_a_connection_test_reads_at_most_4_mib_of_a_10_mib_answer(
    api: httpx.AsyncClient, owner: Account
) -> None:
    with HostileServer("huge") as server:
        result = await _test_connection(api, owner, server.url)
        await _hung_up(server)
    assert result["ok"] is False
    assert result["error"]["code"] == "github_response_too_large"
    assert result["error"]["message"] == (
        f"the response from 127.0.0.1 is larger than {MAX_RESPONSE_BYTES} bytes"
    )
    assert not server.body_completed
    assert server.body_bytes_sent < MAX_RESPONSE_BYTES + 1024 * 1024 < HUGE_BYTES


async def test_a_tool_call_reads_at_most_4_mib_of_a_10_mib_answer_and_is_not_retried(
    api: httpx.AsyncClient, owner: Account, fast_runtime: Runtime
) -> None:
    assert owner.org_id is not None
    with HostileServer("huge") as server:
        await connect(api, owner, "github", server.url, {"token": "t"}, name="huge")
        with pytest.raises(ToolError) as caught:
            async with asyncio.timeout(4 * DEADLINE):
                await call_tool(
                    fast_runtime,
                    org_id=owner.org_id,
                    connection_ref="huge",
                    tool_name="getIssues",
                    args=REPO,
                )
        await _hung_up(server)
    assert (caught.value.code, caught.value.retryable) == ("github_response_too_large", False)
    assert server.requests == 1
    assert not server.body_completed
    assert server.body_bytes_sent < MAX_RESPONSE_BYTES + 1024 * 1024 < HUGE_BYTES


async def test_a_tool_call_to_a_dripping_server_ends_at_the_tool_timeout(
    api: httpx.AsyncClient, owner: Account, fast_runtime: Runtime
) -> None:
    assert owner.org_id is not None
    with HostileServer("drip") as server:
        await connect(api, owner, "github", server.url, {"token": "t"}, name="drip")
        started = time.monotonic()
        with pytest.raises(ToolError) as caught:
            async with asyncio.timeout(4 * DEADLINE):
                await call_tool(
                    fast_runtime,
                    org_id=owner.org_id,
                    connection_ref="drip",
                    tool_name="getIssues",
                    args=REPO,
                )
        elapsed = time.monotonic() - started
    assert (caught.value.code, caught.value.retryable) == ("tool_timeout", True)
    assert DEADLINE - 0.1 <= elapsed <= DEADLINE + 1.0, elapsed


async def _hung_up(server: HostileServer) -> None:
    """Wait until the server saw the client hang up (or finished sending everything)."""
    deadline = time.monotonic() + 5
    while server.hung_up_at is None and not server.body_completed:
        assert time.monotonic() < deadline, "the server neither finished nor saw a hang-up"
        await asyncio.sleep(0.05)


async def test_an_mcp_call_reads_at_most_4_mib_of_a_10_mib_answer(
    api: httpx.AsyncClient, owner: Account, fast_runtime: Runtime
) -> None:
    assert owner.org_id is not None
    with HostileServer("huge") as server:
        await connect(api, owner, "mcp", f"{server.url}/mcp", {}, name="huge-mcp")
        with pytest.raises(ToolError) as caught:
            async with asyncio.timeout(4 * DEADLINE):
                await call_tool(
                    fast_runtime,
                    org_id=owner.org_id,
                    connection_ref="huge-mcp",
                    tool_name="anything",
                    args={},
                )
        await _hung_up(server)
    assert (caught.value.code, caught.value.retryable) == ("mcp_response_too_large", False)
    assert not server.body_completed
    # The SDK may try a second handshake (discover, then initialize): each answer is cut.
    assert 1 <= server.requests <= 2
    assert server.body_bytes_sent < server.requests * (MAX_RESPONSE_BYTES + 1024 * 1024)


async def test_an_answer_that_claims_gzip_and_is_not_is_a_bad_response(
    api: httpx.AsyncClient, owner: Account
) -> None:
    with HostileServer("bad_gzip") as server:
        result = await _test_connection(api, owner, server.url)
    assert result["ok"] is False
    assert result["error"]["code"] == "github_bad_response"
