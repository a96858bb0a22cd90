"""Request and response bodies of /api/workflows."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskloom.auth.schemas import StrictModel
from taskloom.workflows.durations import Duration

STEP_ID_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
ERROR_CODE_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"
MAX_STEPS = 200
MAX_NEEDS = 50
MAX_PARALLEL_CAP = 20  # a for_each step's `max_parallel` at most
MAX_PARALLEL_STEPS = 20  # a definition's `max_parallel_steps` at most
DEFAULT_PARALLEL_STEPS = 4
MAX_TEMPLATE_CHARS = 10_000  # `when` and `for_each`
MAX_VERSION_MESSAGE = 500  # workflow_versions.message
KEY_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_KEY_HELP = (
    "A stable slug naming the workflow in files (docs/WORKFLOWS-AS-CODE.md); unique in the "
    "organization"
)

# Optional fields are None when absent and left out of the stored JSON (`stored()`), so a
# definition is stored as it was written and today's `{id, type, args}` lists stay byte-equal.


class RetryPolicy(StrictModel):
    max_attempts: int = Field(ge=1, le=10, description="Runs in all, the first included")
    backoff: Literal["exponential", "fixed"] | None = Field(
        default=None, description="Default exponential: the delay doubles after each attempt"
    )
    delay: Duration | None = Field(default=None, description='Before the second attempt; "1s"')
    on: list[Annotated[str, Field(pattern=ERROR_CODE_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        max_length=20,
        description="Retry only failures with these error codes (default: retryable ones)",
    )


class StepDefinition(StrictModel):
    id: str = Field(pattern=STEP_ID_PATTERN, description="Unique in the workflow; `steps.<id>`")
    type: str = Field(min_length=1, max_length=32, description="A registered step type")
    args: dict[str, Any] = Field(default_factory=dict, description="Jinja2 templates allowed")
    needs: list[Annotated[str, Field(max_length=64)]] | None = Field(
        default=None,
        max_length=MAX_NEEDS,
        description="Ids of the steps this one runs after; any step with needs makes a DAG",
    )
    when: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="A template rendering to a boolean; false skips the step",
    )
    join: Literal["all_succeeded", "all_done", "any_succeeded"] | None = Field(
        default=None, description="With needs: when a step whose needs failed or were skipped runs"
    )
    for_each: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEMPLATE_CHARS,
        description="A template rendering to a list: the step runs once per item",
    )
    max_parallel: int | None = Field(
        default=None, ge=1, le=MAX_PARALLEL_CAP, description="With for_each: items at a time"
    )
    retry: RetryPolicy | None = None
    timeout: Duration | None = None
    continue_on_error: bool | None = None


class WorkflowDefinition(StrictModel):
    steps: list[StepDefinition] = Field(min_length=1, max_length=MAX_STEPS)
    max_parallel_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_PARALLEL_STEPS,
        description=f"Steps of one execution running at once (default {DEFAULT_PARALLEL_STEPS})",
    )
    deadline: Duration | None = Field(default=None, description="For the whole execution")
    max_cost_usd: Decimal | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        max_digits=13,
        decimal_places=6,
        description="AI spend of one execution at most (its own calls; a child workflow's "
        "execution has its own definition's limit); the tightest budget governs (docs/AI.md)",
    )
    output: Any = Field(default=None, description="The execution's output; templates allowed")
    input_schema: dict[str, Any] | None = Field(
        default=None,
        description="A JSON Schema (2020-12) every start's input must match (API, web UI, "
        "webhook and schedule starts); the web UI's run form is made from it",
    )

    def stored(self) -> dict[str, Any]:
        """The definition as stored: plain JSON, absent optional fields left out."""
        return self.model_dump(mode="json", exclude_none=True)


class WorkflowCreate(StrictModel):
    key: str | None = Field(default=None, pattern=KEY_PATTERN, description=_KEY_HELP)
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=5_000)
    definition: WorkflowDefinition
    enabled: bool = Field(
        default=True, description="A disabled workflow starts from no trigger (execute: 409)"
    )
    message: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_VERSION_MESSAGE,
        description="What this change is, kept with the version it stores",
    )


class WorkflowUpdate(WorkflowCreate):
    key: str | None = Field(
        default=None, pattern=KEY_PATTERN, description=f"{_KEY_HELP}. Absent: unchanged"
    )
    enabled: bool | None = Field(  # type: ignore[assignment]
        default=None, description="Absent: unchanged"
    )


class WorkflowPatch(StrictModel):
    enabled: bool = Field(description="false: no trigger starts it, and execute answers 409")


class WorkflowWarning(BaseModel):
    code: str
    message: str
    names: list[str] = Field(default_factory=list)


class WorkflowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    key: str | None = None
    name: str
    description: str | None
    definition: dict[str, Any]
    version: int
    enabled: bool
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    # What saving it noticed but allowed (create and PUT answers only): e.g. `unknown_secrets`,
    # secrets its templates read that the organization does not have (yet).
    warnings: list[WorkflowWarning] = Field(default_factory=list)


class VersionSummary(BaseModel):
    """A version in the list: who saved it, when, and why."""

    model_config = ConfigDict(from_attributes=True)

    number: int
    name: str
    message: str | None
    restored_from: int | None = Field(description="The version this one restored, if any")
    created_by: uuid.UUID | None
    created_at: datetime


class VersionOut(VersionSummary):
    """Everything the version saved; `triggers` and `schedules` as their creation bodies
    (with their ids, never a secret)."""

    workflow_id: uuid.UUID
    description: str | None
    definition: dict[str, Any]
    triggers: list[dict[str, Any]]
    schedules: list[dict[str, Any]]


class VersionPage(BaseModel):
    items: list[VersionSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class VersionDiff(BaseModel):
    from_version: int | None = Field(description="null: version 1 compared with nothing")
    to_version: int
    diff: str = Field(description="Unified diff of the two versions' canonical YAML; empty: equal")


class RestoreRequest(StrictModel):
    message: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_VERSION_MESSAGE,
        description='Kept with the new version (default "Restored version <n>")',
    )


class RecreatedSecret(BaseModel):
    """A webhook trigger the restore created again: its new URL and secret, shown this once."""

    trigger_id: uuid.UUID
    url: str
    secret: str


class SkippedTrigger(BaseModel):
    id: uuid.UUID = Field(description="The trigger's id in the restored version")
    kind: str
    reason: str


class RestoreOut(BaseModel):
    version: VersionOut
    new_trigger_secrets: list[RecreatedSecret]
    skipped_triggers: list[SkippedTrigger]
