"""A real MCP server for tests: the SDK's MCPServer (FastMCP's successor in mcp 2.x) served over
streamable HTTP by uvicorn in a background thread on 127.0.0.1, behind a bearer-token check.

    with start_mcp_server() as server:
        ...  # point a connection at server.url; server.calls lists the tools it ran
"""

from __future__ import annotations

import hmac
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import uvicorn
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND, ToolAnnotations
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

MCP_PATH = "/mcp"


class Note(BaseModel):
    title: str
    body: str


class SearchResult(BaseModel):
    notes: list[Note]
    total: int


@dataclass
class RunningMcpServer:
    """A started server. `calls` holds (tool name, arguments) for every tool the server ran;
    `methods` every JSON-RPC method that reached the MCP layer (past the token check);
    `http_requests` (HTTP method, headers with lower-case names) of every HTTP request;
    `peers` the client (address, port) of each, so distinct peers are TCP connections."""

    url: str
    calls: list[tuple[str, dict[str, Any]]]
    methods: list[str]
    http_requests: list[tuple[str, dict[str, str]]]
    peers: list[tuple[str, int]]
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)
    _socket: socket.socket = field(repr=False)

    @property
    def connections(self) -> int:
        """TCP connections that carried at least one request."""
        return len(set(self.peers))

    def stop(self) -> None:
        """Stop serving and wait for the thread; idempotent."""
        self._server.should_exit = True
        self._thread.join(timeout=5)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"{self._thread.name} did not stop within 5 s")

    def __enter__(self) -> RunningMcpServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _notes_server(
    calls: list[tuple[str, dict[str, Any]]], methods: list[str], *, legacy_only: bool
) -> MCPServer:
    notes: list[Note] = [Note(title="Welcome", body="Taskloom keeps notes here.")]
    server = MCPServer("fake-notes", version="1.2.3", log_level="WARNING")

    async def record_method(
        ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        methods.append(ctx.method)
        if legacy_only and ctx.method == "server/discover":
            # What a 2025-era server answers: clients fall back to the initialize handshake.
            raise MCPError(code=METHOD_NOT_FOUND, message="Method not found")
        return await call_next(ctx)

    server.middleware.append(record_method)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def search_notes(query: str, limit: int = 5) -> SearchResult:
        """Find notes whose title or body contains the query."""
        calls.append(("search_notes", {"query": query, "limit": limit}))
        found = [n for n in notes if query.lower() in f"{n.title} {n.body}".lower()]
        return SearchResult(notes=found[:limit], total=len(found))

    @server.tool()
    def add_note(title: str, body: str = "") -> str:
        """Store a note."""
        calls.append(("add_note", {"title": title, "body": body}))
        notes.append(Note(title=title, body=body))
        return f"stored note {title!r}"

    @server.tool()
    def explode() -> str:
        """Always fails."""
        calls.append(("explode", {}))
        raise ToolError("the notebook caught fire")

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleep, then answer."""
        calls.append(("slow", {"seconds": seconds}))
        await anyio.sleep(seconds)
        return "done"

    return server


class _Gate:
    """Records every HTTP request (method, headers), then answers 401 unless it carries
    `Authorization: Bearer <token>` (when a token is set)."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        seen: list[tuple[str, dict[str, str]]],
        peers: list[tuple[str, int]],
    ) -> None:
        self.app = app
        self.expected = None if token is None else f"Bearer {token}".encode()
        self.seen = seen
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.append((scope["method"], headers))
            self.peers.append(tuple(scope["client"]))
            given = headers.get("authorization", "").encode("latin-1")
            if self.expected is not None and not hmac.compare_digest(given, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"text/plain"),
                            (b"www-authenticate", b"Bearer"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await self.app(scope, receive, send)


def start_mcp_server(
    token: str | None = "test-mcp-token",
    *,
    legacy_only: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> RunningMcpServer:
    """Serve the notes MCP server on a free 127.0.0.1 port; with a token, require it. With
    `legacy_only` it refuses `server/discover` as a 2025-era server does, so clients use the
    initialize handshake and a stateful session (session id, GET stream, DELETE at the end).
    With `tls` (certificate file, key file) it serves HTTPS (bench/outbound.py)."""
    calls: list[tuple[str, dict[str, Any]]] = []
    methods: list[str] = []
    mcp = _notes_server(calls, methods, legacy_only=legacy_only)
    app: ASGIApp = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        host="127.0.0.1",
        # The SDK's DNS-rebinding guard checks Host/Origin; allow loopback on any port.
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
        ),
    )
    http_requests: list[tuple[str, dict[str, str]]] = []
    peers: list[tuple[str, int]] = []
    app = _Gate(app, token, http_requests, peers)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=1,
        ssl_certfile=None if tls is None else str(tls[0]),
        ssl_keyfile=None if tls is None else str(tls[1]),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name=f"mcp-server-{port}", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            sock.close()
            raise RuntimeError("the fake MCP server did not start")
        time.sleep(0.01)
    return RunningMcpServer(
        url=f"{'http' if tls is None else 'https'}://127.0.0.1:{port}{MCP_PATH}",
        calls=calls,
        methods=methods,
        http_requests=http_requests,
        peers=peers,
        _server=server,
        _thread=thread,
        _socket=sock,
    )
