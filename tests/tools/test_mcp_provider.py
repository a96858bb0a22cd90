"""The MCP provider against a real MCP server (the SDK's MCPServer over streamable HTTP)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import mcp_types
import pytest
from pydantic import ValidationError

from taskloom.tools.base import Connection, ToolError
from taskloom.tools.providers.mcp import McpCredentials, McpProvider, _content_json
from tests.fakes.mcp_server import RunningMcpServer, start_mcp_server

TOKEN = "test-mcp-token"
provider = McpProvider()


def connection(
    url: str,
    *,
    credentials: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Connection:
    return Connection(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        provider="mcp",
        base_url=url,
        credentials={"bearer_token": TOKEN} if credentials is None else credentials,
        config=config or {},
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(timeout=5, headers={"X-Request-ID": "req-123"}) as client:
        yield client


async def failure(coro: Any) -> ToolError:
    with pytest.raises(ToolError) as caught:
        await coro
    return caught.value


async def test_tools_lists_the_servers_tools_marking_read_only_by_annotation_or_config(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    tools = await provider.tools(
        connection(mcp_server.url, config={"read_only_tools": ["slow"]}), http
    )

    by_name = {tool.name: tool for tool in tools}
    assert set(by_name) == {"search_notes", "add_note", "explode", "slow"}
    assert by_name["search_notes"].read_only  # readOnlyHint: true
    assert by_name["slow"].read_only  # named in config
    assert not by_name["add_note"].read_only
    assert not by_name["explode"].read_only
    search = by_name["search_notes"]
    assert search.description.startswith("Find notes")
    assert search.input_schema["required"] == ["query"]
    assert search.Args is None


async def test_call_returns_structured_content_and_a_write_is_seen_by_the_next_read(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    conn = connection(mcp_server.url)

    written = await provider.call(conn, http, "add_note", {"title": "Q3 plan", "body": "ship"})
    found = await provider.call(conn, http, "search_notes", {"query": "q3"})

    assert written == {"result": "stored note 'Q3 plan'"}
    assert found == {"notes": [{"title": "Q3 plan", "body": "ship"}], "total": 1}
    assert mcp_server.calls == [
        ("add_note", {"title": "Q3 plan", "body": "ship"}),
        ("search_notes", {"query": "q3", "limit": 5}),
    ]


@pytest.mark.parametrize(
    ("args", "path"),
    [({"query": 3}, "$.query"), ({}, "$"), ({"query": "x", "limit": "ten"}, "$.limit")],
)
async def test_arguments_failing_the_input_schema_are_refused_before_the_call_is_sent(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient, args: dict[str, Any], path: str
) -> None:
    error = await failure(provider.call(connection(mcp_server.url), http, "search_notes", args))

    assert error.code == "invalid_args"
    assert not error.retryable
    assert f"at {path}:" in error.message
    assert mcp_server.calls == []
    assert "tools/call" not in mcp_server.methods


async def test_calling_a_tool_the_server_does_not_list_is_unknown_tool(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    error = await failure(provider.call(connection(mcp_server.url), http, "drop_tables", {}))

    assert error.code == "unknown_tool"
    assert not error.retryable
    assert "tools/call" not in mcp_server.methods


async def test_a_tool_that_fails_is_mcp_tool_error_quoting_the_servers_text(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    error = await failure(provider.call(connection(mcp_server.url), http, "explode", {}))

    assert error.code == "mcp_tool_error"
    assert not error.retryable
    assert "the notebook caught fire" in error.message
    assert mcp_server.calls == [("explode", {})]


@pytest.mark.parametrize(
    "credentials",
    [{"bearer_token": "wrong-secret-value"}, {}, {"headers": {"X-Api-Key": "wrong-secret-value"}}],
    ids=["wrong token", "no token", "wrong header"],
)
async def test_a_wrong_or_missing_token_is_mcp_unauthorized_without_quoting_it(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient, credentials: dict[str, Any]
) -> None:
    conn = connection(mcp_server.url, credentials=credentials)

    for attempt in (provider.tools(conn, http), provider.call(conn, http, "add_note", {})):
        error = await failure(attempt)
        assert error.code == "mcp_unauthorized"
        assert error.status == 401
        assert not error.retryable
        assert "wrong-secret-value" not in error.message
        assert "wrong-secret-value" not in repr(error.__cause__)
    assert mcp_server.methods == []  # refused before reaching the MCP layer


async def test_auth_can_be_any_header_and_rides_with_the_callers_headers_on_every_request(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    conn = connection(
        mcp_server.url, credentials={"headers": {"Authorization": f"Bearer {TOKEN}", "X-Team": "7"}}
    )

    await provider.call(conn, http, "search_notes", {"query": "welcome"})

    assert mcp_server.http_requests
    for _method, headers in mcp_server.http_requests:
        assert headers["authorization"] == f"Bearer {TOKEN}"
        assert headers["x-team"] == "7"
        assert headers["x-request-id"] == "req-123"
    # The caller's client is shared: it gained no header and is still open.
    assert "authorization" not in http.headers
    assert not http.is_closed


async def test_a_2025_era_server_is_reached_through_the_initialize_handshake(
    http: httpx2.AsyncClient,
) -> None:
    with start_mcp_server(legacy_only=True) as server:
        conn = connection(server.url)

        checked = await provider.check(conn, http)
        written = await provider.call(conn, http, "add_note", {"title": "old school"})

    assert checked == {"server": "fake-notes", "version": "1.2.3", "tools": 4}
    assert written == {"result": "stored note 'old school'"}
    assert "initialize" in server.methods
    assert server.calls == [("add_note", {"title": "old school", "body": ""})]
    # Every request of the stateful session, the GET stream and the DELETE too, is authorized.
    assert {"GET", "DELETE"} <= {method for method, _ in server.http_requests}
    assert all(h["authorization"] == f"Bearer {TOKEN}" for _, h in server.http_requests)


async def test_a_server_that_is_down_is_retryable_mcp_unreachable(
    http: httpx2.AsyncClient,
) -> None:
    server = start_mcp_server()
    server.stop()

    error = await failure(provider.tools(connection(server.url), http))

    assert error.code == "mcp_unreachable"
    assert error.retryable


async def test_a_tool_outlasting_the_clients_timeout_is_retryable_mcp_unreachable(
    mcp_server: RunningMcpServer,
) -> None:
    async with httpx2.AsyncClient(timeout=0.3) as http:
        error = await failure(
            provider.call(connection(mcp_server.url), http, "slow", {"seconds": 0.8})
        )

    assert error.code == "mcp_unreachable"
    assert error.retryable
    assert "in time" in error.message


async def test_an_outer_deadline_cancels_the_call_instead_of_being_swallowed(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await provider.call(connection(mcp_server.url), http, "slow", {"seconds": 0.8})


async def test_a_refusal_by_the_callers_client_like_its_address_guard_surfaces_unwrapped() -> None:
    class Refused(ValueError):
        pass

    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise Refused("refusing to connect")

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(refuse), timeout=5) as http:
        with pytest.raises(Refused):
            await provider.tools(connection("https://mcp.example.com/mcp"), http)


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (503, "mcp_unreachable", True),
        (429, "mcp_unreachable", True),
        (403, "mcp_unauthorized", False),
        (404, "mcp_protocol_error", False),
    ],
)
async def test_http_errors_map_to_codes_by_status(status: int, code: str, retryable: bool) -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, text="nope")

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), timeout=5) as http:
        error = await failure(provider.check(connection("https://mcp.example.com/mcp"), http))

    assert (error.code, error.retryable, error.status) == (code, retryable, status)
    assert f"HTTP {status}" in error.message


async def test_a_json_rpc_error_is_a_non_retryable_mcp_protocol_error() -> None:
    def answer(request: httpx2.Request) -> httpx2.Response:
        request_id = json.loads(request.read()).get("id")
        error = {"code": -32600, "message": "the server is confused"}
        return httpx2.Response(200, json={"jsonrpc": "2.0", "id": request_id, "error": error})

    async with httpx2.AsyncClient(transport=httpx2.MockTransport(answer), timeout=5) as http:
        error = await failure(provider.tools(connection("https://mcp.example.com/mcp"), http))

    assert error.code == "mcp_protocol_error"
    assert not error.retryable
    assert "the server is confused" in error.message


async def test_check_names_the_server_and_counts_its_tools(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    assert await provider.check(connection(mcp_server.url), http) == {
        "server": "fake-notes",
        "version": "1.2.3",
        "tools": 4,
    }


async def test_a_connection_without_an_endpoint_url_is_invalid_config(
    http: httpx2.AsyncClient,
) -> None:
    error = await failure(provider.check(connection(""), http))

    assert error.code == "invalid_config"


@pytest.mark.parametrize(
    "credentials",
    [
        {"headers": {"X Bad Name": "secret-value"}},
        {"headers": {"X-Key\n": "secret-value"}},
        {"headers": {"X-Key": "secret-value\r\nX-Injected: 1"}},
        {"bearer_token": "secret-value\n"},
        {"headers": {"Host": "secret-value"}},
        {"token": "secret-value"},
    ],
    ids=[
        "header name",
        "header name LF",
        "header value CRLF",
        "token LF",
        "reserved header",
        "unknown field",
    ],
)
def test_credentials_that_cannot_be_sent_safely_are_rejected_without_echoing_them(
    credentials: dict[str, Any],
) -> None:
    with pytest.raises(ValidationError) as caught:
        McpCredentials.model_validate(credentials)

    assert "secret-value" not in str(caught.value)


async def test_a_bearer_token_and_an_authorization_header_together_are_invalid_credentials(
    mcp_server: RunningMcpServer, http: httpx2.AsyncClient
) -> None:
    conn = connection(
        mcp_server.url,
        credentials={"bearer_token": TOKEN, "headers": {"authorization": f"Bearer {TOKEN}"}},
    )

    error = await failure(provider.tools(conn, http))

    assert error.code == "invalid_credentials"
    assert TOKEN not in error.message


def test_content_blocks_become_json_with_binary_data_replaced_by_its_size() -> None:
    text = mcp_types.TextContent(text="hello")
    image = mcp_types.ImageContent(data="AAECAwQ=", mime_type="image/png")  # 5 bytes

    assert _content_json(text) == {"type": "text", "text": "hello"}
    assert _content_json(image) == {"type": "image", "mime_type": "image/png", "bytes": 5}
