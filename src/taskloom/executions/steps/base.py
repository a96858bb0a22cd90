"""What a step type is: validated arguments and an async `run`. Step types register in
`taskloom.executions.steps` (`agent`, `ai`, `http`, `tool`, `transform`)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import jsonschema
from pydantic import BaseModel, ConfigDict

from taskloom import safe_jsonschema
from taskloom.config import Settings

if TYPE_CHECKING:
    from taskloom.runtime import Runtime


class StepArgs(BaseModel):
    """Base of every step type's arguments: unknown keys are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


def checked_json_schema(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A step's `json_schema` argument (`ai`, `agent`): a valid JSON Schema that
    safe_jsonschema can check in bounded time, else ValueError (a 422 at save)."""
    if value is not None:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as error:
            raise ValueError(f"json_schema is not a valid JSON Schema: {error.message}") from None
        if (reason := safe_jsonschema.unsupported(value)) is not None:
            raise ValueError(f"json_schema: {reason}")
    return value


class StepError(Exception):
    """A step failed for a reason retrying will not fix (bad arguments, 4xx, refused target).
    `message` is shown to the workflow's users, so it never holds a secret."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: str = "step_failed", details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class RetryableStepError(StepError):
    """A failure that may pass on its own (timeout, connection error, 429, 5xx): the job is
    retried with exponential backoff while attempts remain."""

    retryable: ClassVar[bool] = True


@dataclass(frozen=True)
class StepContext:
    """What a running step may know about where it runs."""

    settings: Settings
    org_id: uuid.UUID
    execution_id: uuid.UUID
    step_id: str
    attempt: int  # 1 for the first run of this step
    item_index: int | None = None  # the for-each item this run is for, if any
    triggered_by: uuid.UUID | None = None  # the user who started the execution
    # The worker's database, Redis and credential cipher, for steps that need them (`ai`,
    # `tool`); None where a step runs outside a worker (unit tests of `http`).
    runtime: Runtime | None = None
    # Publishes a live event of the execution (executions/live.py); None outside a worker.
    live: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
    # The execution's secret redaction (`Run.scrubbed`), for steps that persist rows of their
    # own (`agent`'s turns): everything they store passes through it. None: nothing to redact.
    scrub: Callable[[Any], Any] | None = None
    # Says the job made progress (a sub-step was committed): earlier stalls of its job stop
    # counting against it, as when a step finishes (executions/runner.py). None outside a job.
    progress: Callable[[], Awaitable[None]] | None = None

    async def emit(self, event: str, data: dict[str, Any]) -> None:
        """Show `data` on the execution's live stream (never fails the step)."""
        if self.live is not None:
            await self.live(event, {"step_id": self.step_id, "item_index": self.item_index, **data})

    async def progressed(self) -> None:
        if self.progress is not None:
            await self.progress()

    def scrubbed(self, value: Any) -> Any:
        return value if self.scrub is None else self.scrub(value)

    def require_runtime(self) -> Runtime:
        if self.runtime is None:
            raise StepError("this step needs a worker runtime", code="internal_error")
        return self.runtime

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and re-runs of the same step (or for-each item) of the same
        execution: `<execution>:<step>[:<index>]`."""
        if self.item_index is not None:
            return f"{self.execution_id}:{self.step_id}:{self.item_index}"
        return f"{self.execution_id}:{self.step_id}"


class StepType(Protocol):
    """A kind of step. `Args` validates the rendered arguments; `run` returns JSON-able output
    or raises StepError / RetryableStepError. It must never block the event loop (a blocked
    loop stops BullMQ's lock renewal and the job runs twice): run blocking work in a thread."""

    name: ClassVar[str]
    Args: ClassVar[type[StepArgs]]

    async def run(self, args: Any, ctx: StepContext) -> Any: ...
