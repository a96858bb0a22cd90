"""What a tool provider is. A provider (Notion, Linear, GitHub, MCP) knows one API's shape: its
tools, how to call them and how to check a connection works. It never opens its own HTTP client
(the executor hands it one with the address guard, timeout and request id already set) and it
never caches, retries, counts metrics or touches circuit breakers: `tools/executor.py` does that
once for every provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx
from pydantic import BaseModel, ConfigDict


class ToolArgs(BaseModel):
    """Base of a built-in tool's arguments: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid")


class ToolError(Exception):
    """A tool call failed. `message` is shown to users: it may quote the provider's own error
    message, but never a credential, a header value or a full URL with a query string.
    `retryable` is True for timeouts, connection errors, 429 and 5xx; False for everything a
    retry cannot fix (401/403/404/422, bad arguments, unknown tool)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "tool_failed",
        retryable: bool = False,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class Tool:
    """One callable tool. Built-in tools validate with `Args` (a ToolArgs subclass); MCP tools
    have only `input_schema` (JSON Schema from the server) and `Args` None."""

    name: str
    description: str
    read_only: bool
    input_schema: dict[str, Any]
    Args: type[ToolArgs] | None = None


@dataclass(frozen=True)
class Connection:
    """One organization's connection, credentials already decrypted (never log this object)."""

    id: uuid.UUID
    org_id: uuid.UUID
    provider: str
    base_url: str  # the connection's own, else the provider's default
    credentials: dict[str, Any] = field(repr=False)
    config: dict[str, Any] = field(default_factory=dict)


class ToolProvider(Protocol):
    """A kind of connection. `Credentials` and `Config` validate what an admin stores (both
    extra="forbid"); `call` gets arguments already validated (a dict from `Args.model_dump(
    mode="json", exclude_unset=True)` or, for MCP, checked against the tool's input schema).
    Outputs are JSON-able dicts/lists trimmed to the fields a workflow needs, not raw API dumps.

    `http` is an httpx.AsyncClient for REST/GraphQL providers. The MCP provider receives the
    SDK's own client type instead (see providers/mcp.py)."""

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    Credentials: ClassVar[type[BaseModel]]
    Config: ClassVar[type[BaseModel]]

    async def tools(self, connection: Connection, http: Any) -> list[Tool]: ...

    async def call(
        self, connection: Connection, http: Any, tool: str, args: dict[str, Any]
    ) -> Any: ...

    async def check(self, connection: Connection, http: Any) -> dict[str, Any]:
        """One cheap authenticated call; returns a short description of the account reached
        (e.g. {"account": "octocat"}). Raises ToolError on failure."""
        ...


def status_error(provider: str, response: httpx.Response, detail: str | None = None) -> ToolError:
    """The ToolError for a non-2xx answer: retryable for 429/5xx, never quoting headers."""
    status = response.status_code
    message = f"{provider} answered HTTP {status}"
    if detail:
        message = f"{message}: {detail[:300]}"
    retryable = status == 429 or status >= 500
    return ToolError(message, code=f"{provider}_http_{status}", retryable=retryable, status=status)
