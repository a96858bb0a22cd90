"""The `mcp_server` fixture: a real MCP server (tests/fakes/mcp_server.py) for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.mcp_server import RunningMcpServer, start_mcp_server


@pytest.fixture
def mcp_server() -> Iterator[RunningMcpServer]:
    """A notes MCP server on 127.0.0.1 requiring `Bearer test-mcp-token`; stopped afterwards."""
    with start_mcp_server() as server:
        yield server
