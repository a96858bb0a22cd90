"""`agent`: a model that calls the organization's tools in a bounded, resumable loop
(executions/agent.py, ADR 0015), e.g.

    {"category": "balanced", "prompt": "Triage {{ input.ticket }}",
     "tools": [{"connection": "notes", "tools": "read_only"},
               {"connection": "gh", "tool": "createIssue"}],
     "allow_writes": true, "max_iterations": 8, "max_cost_usd": 0.50,
     "json_schema": {"type": "object", "required": ["priority"]}}

Output: `{"text" | "json": …, "turns": n, "tool_calls": n, "cost_usd": "…"}`. Its arguments are
checked whole when the workflow is saved: the tools, limits and schema must be literal (the
prompt and system prompt are templates like any argument)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from taskloom.executions.agent import AgentLoop, AgentSpec
from taskloom.executions.steps.base import StepArgs, StepContext, checked_json_schema

DEFAULT_MAX_ITERATIONS = 8
MAX_ITERATIONS = 50


class AgentToolRef(StepArgs):
    """One tool (`tool`) or a connection's tools (`tools`: "read_only" or "all")."""

    connection: str = Field(min_length=1, max_length=200)
    tool: str | None = Field(default=None, min_length=1, max_length=200)
    tools: Literal["read_only", "all"] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> AgentToolRef:
        if (self.tool is None) == (self.tools is None):
            raise ValueError('give either "tool" (one tool) or "tools" ("read_only" or "all")')
        return self


class AgentArgs(StepArgs):
    prompt: str = Field(min_length=1, max_length=400_000)
    system: str | None = Field(default=None, max_length=100_000)
    model: str | None = Field(default=None, max_length=128)
    category: str | None = Field(default=None, max_length=64)
    tools: list[AgentToolRef] = Field(default_factory=list, max_length=50)
    allow_writes: bool = False
    max_iterations: int = Field(default=DEFAULT_MAX_ITERATIONS, ge=1, le=MAX_ITERATIONS)
    max_cost_usd: Decimal | None = Field(default=None, gt=0, le=100_000, decimal_places=6)
    json_schema: dict[str, Any] | None = None

    _is_schema = field_validator("json_schema")(checked_json_schema)

    @model_validator(mode="after")
    def _model_or_category(self) -> AgentArgs:
        if self.model is not None and self.category is not None:
            raise ValueError('give "model" or "category", not both')
        return self


class AgentStep:
    name: ClassVar[str] = "agent"
    Args: ClassVar[type[StepArgs]] = AgentArgs
    checked_at_save: ClassVar[bool] = True

    async def run(self, args: AgentArgs, ctx: StepContext) -> Any:
        spec = AgentSpec(
            prompt=args.prompt,
            system=args.system,
            model=args.model,
            category=args.category,
            tools=[(ref.connection, ref.tool, ref.tools) for ref in args.tools],
            allow_writes=args.allow_writes,
            max_iterations=args.max_iterations,
            max_cost_usd=args.max_cost_usd,
            json_schema=args.json_schema,
        )
        return await AgentLoop(ctx, spec).run()
