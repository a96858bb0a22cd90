"""The tools an `agent` step offers its model: the named connections' tools (one, its
read-only ones, or all), each under a name valid for both APIs (^[a-zA-Z0-9_-]{1,64}$:
`<connection>__<tool>`, other characters `_`, a hash suffix when too long or taken) that maps
back to the connection and tool. A write tool is listed but not offered without
`allow_writes`, so a call of it can be refused by name."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass

from taskloom.ai.providers.base import ToolSpec
from taskloom.executions.steps.base import RetryableStepError, StepError
from taskloom.runtime import Runtime
from taskloom.tools.base import Tool, ToolError
from taskloom.tools.executor import connection_tools

MAX_TOOLS = 128  # OpenAI's limit on tools per request
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")
_NAME_LIMIT = 64


@dataclass(frozen=True)
class OfferedTool:
    """One tool of a named connection, under the name the model sees."""

    name: str
    connection: str
    tool: Tool
    offered: bool  # False: a write tool without allow_writes


def model_name(connection: str, tool: str, taken: set[str]) -> str:
    """A name for `<connection>__<tool>` that both APIs accept and no other tool has."""
    plain = _NAME_UNSAFE.sub("_", f"{connection}__{tool}")
    if len(plain) <= _NAME_LIMIT and plain not in taken:
        return plain
    digest = hashlib.sha256(f"{connection}\x00{tool}".encode()).hexdigest()[:8]
    return f"{plain[: _NAME_LIMIT - 9]}_{digest}"


async def offered_tools(
    runtime: Runtime,
    *,
    org_id: uuid.UUID,
    refs: list[tuple[str, str | None, str | None]],
    allow_writes: bool,
) -> list[OfferedTool]:
    """The tools `refs` name ((connection, tool, None) or (connection, None, "read_only" |
    "all")), in their order; StepError for a connection or tool that is not there."""
    named: list[OfferedTool] = []
    taken: set[str] = set()
    listed: dict[str, list[Tool]] = {}
    for connection, tool_name, which in refs:
        if connection not in listed:
            try:
                _, listed[connection] = await connection_tools(
                    runtime, org_id=org_id, connection_ref=connection
                )
            except ToolError as error:
                kind = RetryableStepError if error.retryable else StepError
                raise kind(error.message, code=error.code) from None
        tools = listed[connection]
        if tool_name is not None:
            chosen = [t for t in tools if t.name == tool_name]
            if not chosen:
                known = ", ".join(sorted(t.name for t in tools)) or "none"
                raise StepError(
                    f"connection {connection!r} has no tool {tool_name!r} (tools: {known})",
                    code="unknown_tool",
                )
        else:
            chosen = [t for t in tools if which == "all" or t.read_only]
        for tool in chosen:
            if any(n.connection == connection and n.tool.name == tool.name for n in named):
                continue
            name = model_name(connection, tool.name, taken)
            taken.add(name)
            named.append(OfferedTool(name, connection, tool, allow_writes or tool.read_only))
    if sum(n.offered for n in named) > MAX_TOOLS:
        raise StepError(f"more than {MAX_TOOLS} tools to offer", code="too_many_tools")
    return named


def tool_spec(named: OfferedTool) -> ToolSpec:
    schema = named.tool.input_schema or {"type": "object", "properties": {}}
    description = named.tool.description or f"{named.tool.name} ({named.connection})"
    return ToolSpec(name=named.name, description=description[:1024], input_schema=schema)
