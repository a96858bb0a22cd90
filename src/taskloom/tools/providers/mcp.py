"""MCP: any server speaking the Model Context Protocol over streamable HTTP, through the official
SDK (`mcp` 2.x, which sends HTTP with `httpx2`). The connection's base URL is the server's
endpoint (e.g. https://host/mcp); its tools are whatever the server lists.

How a call reaches the server. The caller hands us an `httpx2.AsyncClient` that carries the
address guard, timeout and X-Request-ID header, and may share it, so we never change it. The
SDK's supported hook is `streamable_http_client(url, http_client=...)`; we give it a client of
our own whose transport (`_ThroughCaller`) sends every request through the caller's client, and
whose default headers are the caller's plus this connection's auth headers. So the auth headers
ride on every request the SDK makes (POST, the GET stream, the closing DELETE) and the caller's
guard still sees each of them. That transport also notes the HTTP status of the last POST and
stops at 401/403: the SDK folds every HTTP error into one JSON-RPC error, so the status is the
only way to tell a bad token from a broken server.

Each `tools`/`call`/`check` opens its own session (negotiate, work, close): simple, stateless
and correct for servers that keep per-session state. The caller's client reuses kept-alive
connections (taskloom/outbound_pool.py), so a session costs its requests, not a TCP and TLS
handshake. Sessions themselves are not pooled: the SDK's `Client` holds anyio task groups that
must be left by the task that entered them (a pooled one would need an owner task and a relay),
the last-POST status and size cap kept here are per session and would mix concurrent calls'
errors, the X-Request-ID header is fixed per session, and a server's per-session state would
pass from one execution to the next.

`call` lists the tools first, because the arguments are checked against the tool's input schema
before anything is sent and because 2026-07-28 servers want a tool listed before it is called.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, cast

import httpx2
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from taskloom import __version__
from taskloom.tools.base import Connection, Tool, ToolError
from taskloom.tools.providers._rest import MAX_RESPONSE_BYTES, validated
from taskloom.tools.providers.mcp_args import MESSAGE_LIMIT, check_args

if TYPE_CHECKING:  # the SDK is imported by the first session (over a second of import time)
    import mcp_types
    from mcp import Client

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # control characters but tab: CR/LF, NUL...
# Headers the transport or the caller sets; an admin overriding them would break the protocol.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "accept",
        "x-request-id",
        "last-event-id",
    }
)
_MAX_PAGES = 100  # tools/list pages followed before giving up on a paginator that never ends


class McpCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    bearer_token: SecretStr | None = Field(
        default=None, description="Sent as `Authorization: Bearer <token>`"
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra headers sent on every request (e.g. an API key)"
    )

    @field_validator("bearer_token")
    @classmethod
    def _token_is_one_line(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (
            not value.get_secret_value() or _CONTROL.search(value.get_secret_value())
        ):
            raise ValueError("must be non-empty, without control characters (CR, LF)")
        return value

    @field_validator("headers")
    @classmethod
    def _headers_are_sendable(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name[:64]!r} is not a valid HTTP header name")
            if name.lower() in _RESERVED_HEADERS or name.lower().startswith("mcp-"):
                raise ValueError(f"header {name!r} is set by Taskloom or the MCP transport")
            if _CONTROL.search(secret.get_secret_value()):
                raise ValueError(f"the value of header {name!r} contains control characters")
        return value

    @model_validator(mode="after")
    def _one_authorization(self) -> McpCredentials:
        if self.bearer_token is not None and any(
            n.lower() == "authorization" for n in self.headers
        ):
            raise ValueError("set bearer_token or an Authorization header, not both")
        return self

    def auth_headers(self) -> dict[str, str]:
        """The headers to add to every request (never log them)."""
        headers = {name: secret.get_secret_value() for name, secret in self.headers.items()}
        if self.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.bearer_token.get_secret_value()}"
        return headers


class McpConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read_only_tools: list[str] = Field(
        default_factory=list,
        description="Tools to treat as read-only besides those annotated readOnlyHint: true",
    )


class _AuthRejected(Exception):
    """The server answered 401/403: raised inside the SDK's task group, caught in `_session`."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _AnswerTooLarge(httpx2.StreamError):
    """An answer passed MAX_RESPONSE_BYTES. A StreamError, so the SDK fails the request waiting
    for it at once (rather than at its read timeout); `_session` names the reason."""


class _Capped(httpx2.AsyncByteStream):
    """A response body that stops after MAX_RESPONSE_BYTES (counted as sent, before decoding)."""

    def __init__(self, inner: httpx2.AsyncByteStream, through: _ThroughCaller) -> None:
        self._inner = inner
        self._through = through

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > MAX_RESPONSE_BYTES:
                self._through.too_large = True
                raise _AnswerTooLarge(f"an answer longer than {MAX_RESPONSE_BYTES} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _ThroughCaller(httpx2.AsyncBaseTransport):
    """Sends each request the SDK builds through the caller's client (and so through its address
    guard), without following redirects: the SDK follows same-origin ones itself. Each answer's
    body is read up to MAX_RESPONSE_BYTES, as the REST providers' are."""

    def __init__(self, http: httpx2.AsyncClient) -> None:
        self._http = http
        self.last_post_status: int | None = None
        self.too_large = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._http.send(request, stream=True, follow_redirects=False)
        if request.method == "POST":
            self.last_post_status = response.status_code
        if response.status_code in (401, 403):
            await response.aclose()
            raise _AuthRejected(response.status_code)
        response.stream = _Capped(cast(httpx2.AsyncByteStream, response.stream), self)
        return response

    # aclose() is inherited and does nothing: the caller's client is the caller's to close.


class McpProvider:
    name: ClassVar[str] = "mcp"
    default_base_url: ClassVar[str] = ""
    Credentials: ClassVar[type[BaseModel]] = McpCredentials
    Config: ClassVar[type[BaseModel]] = McpConfig

    async def tools(self, connection: Connection, http: httpx2.AsyncClient) -> list[Tool]:
        config = validated(
            McpConfig,
            connection.config,
            what="the MCP connection's settings",
            code="invalid_config",
        )
        read_only = set(config.read_only_tools)
        async with _session(connection, http) as client:
            listed = await _list_tools(client)
        return [
            Tool(
                name=tool.name,
                description=tool.description or tool.title or "",
                read_only=(
                    (tool.annotations is not None and tool.annotations.read_only_hint is True)
                    or tool.name in read_only
                ),
                input_schema=tool.input_schema,
                Args=None,
            )
            for tool in listed
        ]

    async def call(
        self, connection: Connection, http: httpx2.AsyncClient, tool: str, args: dict[str, Any]
    ) -> Any:
        async with _session(connection, http) as client:
            listed = {t.name: t for t in await _list_tools(client)}
            if tool not in listed:
                raise ToolError(f"the MCP server has no tool {tool[:100]!r}", code="unknown_tool")
            check_args(tool, listed[tool].input_schema, args)
            result = await client.call_tool(tool, args)
        if result.is_error:
            import mcp_types

            text = " ".join(
                block.text for block in result.content if isinstance(block, mcp_types.TextContent)
            ).strip()
            raise ToolError(
                f"{tool} failed: {text or 'the server gave no reason'}"[:MESSAGE_LIMIT],
                code="mcp_tool_error",
            )
        if result.structured_content is not None:
            return result.structured_content
        return [_content_json(block) for block in result.content]

    async def check(self, connection: Connection, http: httpx2.AsyncClient) -> dict[str, Any]:
        async with _session(connection, http) as client:
            listed = await _list_tools(client)
            info = client.server_info  # None when a 2026-era server does not identify itself
        return {
            "server": info.name if info else None,
            "version": info.version if info else None,
            "tools": len(listed),
        }


@asynccontextmanager
async def _session(connection: Connection, http: httpx2.AsyncClient) -> AsyncIterator[Client]:
    """A negotiated MCP session with the connection's server; every failure inside (the SDK's
    ExceptionGroups included) leaves as a ToolError."""
    credentials = validated(
        McpCredentials,
        connection.credentials,
        what="the MCP connection's credentials",
        code="invalid_credentials",
    )
    url = _endpoint(connection)
    through = _ThroughCaller(http)
    headers = httpx2.Headers(http.headers)
    headers.update(credentials.auth_headers())  # replaces a same-named header, whatever its case
    import mcp_types
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    sdk_http = httpx2.AsyncClient(
        headers=headers,
        timeout=http.timeout,
        max_redirects=http.max_redirects,
        transport=through,
    )
    try:
        async with (
            sdk_http,
            Client(
                streamable_http_client(url, http_client=sdk_http),
                client_info=mcp_types.Implementation(name="taskloom", version=__version__),
                read_timeout_seconds=http.timeout.read,
                cache=None,  # one session per call: nothing to reuse
            ) as client,
        ):
            yield client
    except Exception as exc:  # cancellation is a BaseException and passes through
        if through.too_large:  # whatever the SDK made of the cut answer
            raise ToolError(
                f"the MCP server's answer is larger than {MAX_RESPONSE_BYTES} bytes",
                code="mcp_response_too_large",
            ) from None
        cause = _root_cause(exc)
        error = _as_tool_error(cause, through.last_post_status)
        if error is None:
            raise cause from None
        if error is cause:  # ours, raised inside the session
            raise error from None
        raise error from cause


def _endpoint(connection: Connection) -> str:
    url = connection.base_url.strip()
    if not url:
        raise ToolError("an MCP connection needs the server's endpoint URL", code="invalid_config")
    try:
        scheme = httpx2.URL(url).scheme
    except httpx2.InvalidURL:
        scheme = ""
    if scheme not in ("http", "https"):
        raise ToolError("the MCP endpoint must be an http(s) URL", code="invalid_config")
    return url


async def _list_tools(client: Client) -> list[mcp_types.Tool]:
    """Every tool the server lists, following pagination cursors."""
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    seen: set[str] = set()
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None or cursor in seen:
            return tools
        seen.add(cursor)
    raise ToolError(
        f"the MCP server listed more than {_MAX_PAGES} pages of tools", code="mcp_protocol_error"
    )


def _content_json(block: mcp_types.ContentBlock) -> dict[str, Any]:
    """A content block as JSON for a workflow: text kept, binary data replaced by its size."""
    import mcp_types

    if isinstance(block, mcp_types.TextContent):
        return {"type": "text", "text": block.text}
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return {"type": block.type, "mime_type": block.mime_type, "bytes": _size(block.data)}
    if isinstance(block, mcp_types.ResourceLink):
        return {
            "type": block.type,
            "uri": block.uri,
            "name": block.name,
            "mime_type": block.mime_type,
        }
    resource = block.resource
    out: dict[str, Any] = {"type": block.type, "uri": resource.uri, "mime_type": resource.mime_type}
    if isinstance(resource, mcp_types.TextResourceContents):
        out["text"] = resource.text
    else:
        out["bytes"] = _size(resource.blob)
    return out


def _size(data: str) -> int:
    """Bytes encoded by a base64 string, without decoding it."""
    data = data.strip()
    return max(len(data) * 3 // 4 - data[-2:].count("="), 0)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _root_cause(exc: BaseException) -> BaseException:
    """The exception that explains a failure the SDK may have wrapped in ExceptionGroups: a
    refused credential over our own errors, over network errors, over JSON-RPC errors (a broken
    connection also fails the requests waiting on it)."""
    from mcp import MCPError

    leaves = list(_leaves(exc))
    for kind in (_AuthRejected, ToolError, httpx2.TransportError, OSError, MCPError):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return leaves[0]


def _as_tool_error(exc: BaseException, last_post_status: int | None) -> ToolError | None:
    """The ToolError for a failure; None for one that is a bug rather than the server's doing."""
    import mcp_types
    from mcp import MCPError

    if isinstance(exc, ToolError):
        return exc
    if isinstance(exc, _AuthRejected):
        return ToolError(
            f"the MCP server refused the connection's credentials (HTTP {exc.status})",
            code="mcp_unauthorized",
            status=exc.status,
        )
    # httpx2's own text is never quoted: it may name the URL with its query.
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return _unreachable("the MCP server did not answer in time")
    if isinstance(exc, httpx2.TransportError | OSError):
        return _unreachable(f"could not talk to the MCP server ({type(exc).__name__})")
    if isinstance(exc, MCPError):
        if exc.code == mcp_types.REQUEST_TIMEOUT:
            return _unreachable("the MCP server did not answer in time")
        if exc.code == mcp_types.CONNECTION_CLOSED:
            return _unreachable("the MCP server closed the connection")
        status = last_post_status
        if status is not None and (status == 429 or status >= 500):
            return _unreachable(f"the MCP server answered HTTP {status}", status=status)
        prefix = f"HTTP {status}: " if status is not None and status >= 400 else ""
        return ToolError(
            f"the MCP server answered {prefix}{exc.message}"[:MESSAGE_LIMIT],
            code="mcp_protocol_error",
            status=status if prefix else None,
        )
    if isinstance(exc, httpx2.HTTPError | ValidationError) or (
        isinstance(exc, RuntimeError) and "protocol version" in str(exc)
    ):
        # A result that does not match the protocol, a body that will not decode, no protocol
        # version in common: a retry meets the same server.
        return ToolError(
            f"the MCP server broke the protocol ({type(exc).__name__})", code="mcp_protocol_error"
        )
    return None


def _unreachable(message: str, *, status: int | None = None) -> ToolError:
    return ToolError(message, code="mcp_unreachable", retryable=True, status=status)
