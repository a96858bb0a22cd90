"""`ai`: ask a model. Name a `category` (routed through the model catalog's tiers, downgraded
when the organization's budget runs low) or a `model`; the prompt and system prompt are
templates like every other argument. Output: text (and `json` when `output` is "json"), the
model used, and tokens and cost. In a worker the call streams (the provider's streaming API):
its text shows on the execution's live stream as `token` events while it is written."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from taskloom.ai.executor import AiCall, AiStepError, run_ai
from taskloom.executions.live import Deltas
from taskloom.executions.steps.base import (
    RetryableStepError,
    StepArgs,
    StepContext,
    StepError,
    checked_json_schema,
)


class AiArgs(StepArgs):
    prompt: str = Field(min_length=1, max_length=400_000)
    system: str | None = Field(default=None, max_length=100_000)
    category: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=128)
    provider: Literal["anthropic", "openai"] | None = None
    connection: str | None = Field(default=None, max_length=200)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    output: Literal["text", "json"] = "text"
    json_schema: dict[str, Any] | None = None
    allow_downgrade: bool = True

    _is_schema = field_validator("json_schema")(checked_json_schema)

    @model_validator(mode="after")
    def _schema_needs_json(self) -> AiArgs:
        if self.json_schema is not None and self.output != "json":
            raise ValueError('json_schema needs output: "json"')
        return self


class AiStep:
    name: ClassVar[str] = "ai"
    Args: ClassVar[type[StepArgs]] = AiArgs

    async def run(self, args: AiArgs, ctx: StepContext) -> Any:
        deltas = Deltas(ctx.emit, {}) if ctx.live is not None else None
        call = AiCall(
            org_id=ctx.org_id,
            user_id=ctx.triggered_by,
            execution_id=ctx.execution_id,
            step_id=ctx.step_id,
            prompt=args.prompt,
            system=args.system,
            category=args.category,
            model=args.model,
            provider=args.provider,
            connection=args.connection,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            json_output=args.output == "json",
            json_schema=args.json_schema,
            allow_downgrade=args.allow_downgrade,
            on_text=deltas.add if deltas is not None else None,
        )
        try:
            return await run_ai(ctx.require_runtime(), call)
        except AiStepError as error:
            kind = RetryableStepError if error.retryable else StepError
            raise kind(error.message, code=error.code, details=error.details) from None
        finally:
            if deltas is not None:
                await deltas.flush()
