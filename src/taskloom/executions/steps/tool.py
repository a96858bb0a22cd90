"""`tool`: call a tool through one of the organization's connections, e.g.
`{"connection": "github", "tool": "createIssue", "args": {"title": "{{ input.title }}"}}`.
Read-only tools are answered from a short Redis cache unless `cache` is false; output is
`{"result": ..., "cached": bool, "tool": name}`."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from taskloom.executions.steps.base import RetryableStepError, StepArgs, StepContext, StepError
from taskloom.tools.base import ToolError
from taskloom.tools.executor import call_tool


class ToolStepArgs(StepArgs):
    connection: str = Field(min_length=1, max_length=200)  # name or id
    tool: str = Field(min_length=1, max_length=200)
    args: dict[str, Any] = Field(default_factory=dict)
    cache: bool = True


class ToolStep:
    name: ClassVar[str] = "tool"
    Args: ClassVar[type[StepArgs]] = ToolStepArgs

    async def run(self, args: ToolStepArgs, ctx: StepContext) -> Any:
        try:
            return await call_tool(
                ctx.require_runtime(),
                org_id=ctx.org_id,
                connection_ref=args.connection,
                tool_name=args.tool,
                args=args.args,
                use_cache=args.cache,
            )
        except ToolError as error:
            kind = RetryableStepError if error.retryable else StepError
            details = {"status": error.status} if error.status is not None else None
            raise kind(error.message, code=error.code, details=details) from None
