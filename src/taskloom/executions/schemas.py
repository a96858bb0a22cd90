"""Request and response bodies of /api/workflows/{id}/execute, /api/executions and
/api/queue/failed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from taskloom.auth.schemas import StrictModel
from taskloom.workflows.schemas import STEP_ID_PATTERN


class ExecuteRequest(StrictModel):
    input: dict[str, Any] = Field(default_factory=dict)


class RerunRequest(StrictModel):
    """A body for POST /api/executions/{id}/retry: re-run the finished execution as a new one."""

    definition: Literal["original", "current"] = Field(
        default="original",
        description="original: the definition the execution ran; current: the workflow's now",
    )
    from_step: str | None = Field(
        default=None,
        pattern=STEP_ID_PATTERN,
        max_length=64,
        description="The steps upstream of it keep their recorded outputs; it and everything "
        "else runs again. Absent: every step runs again",
    )


class StepOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step_id: str
    position: int
    type: str
    status: str
    input: dict[str, Any] | None
    output: Any | None
    error: dict[str, Any] | None
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    wake_at: datetime | None = None
    child_execution_id: uuid.UUID | None = None
    reused: bool = Field(
        default=False,
        description="Copied with its recorded result from the execution this one re-runs "
        "(`retry_of`): it did not run here (attempts 0)",
    )
    items: ItemsProgress | None = Field(
        default=None, description="A for_each step's items by status (None for other steps)"
    )


class AgentTurnOut(BaseModel):
    """One sub-step of an `agent` step: a model turn (`kind` "model") or a tool call."""

    item_index: int | None = Field(description="The for_each item it belongs to, if any")
    turn: int
    kind: str = Field(description='"model" or "tool"')
    status: str = Field(description="running, succeeded or failed")
    attempts: int
    input: Any | None = Field(
        description="A model turn: the text sent before it; a tool call: its arguments"
    )
    output: Any | None = Field(
        description="A model turn: its text and tool calls; a tool call: its result"
    )
    error: dict[str, Any] | None
    duration_ms: int | None
    started_at: str | None
    finished_at: str | None
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: str | None = None
    call_index: int | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    connection: str | None = None
    tool: str | None = None
    idempotency_key: str | None = None


class AgentTurnsOut(BaseModel):
    execution_id: uuid.UUID
    step_id: str
    turns: list[AgentTurnOut]


class ItemsProgress(BaseModel):
    total: int = Field(description="Items that have started so far")
    succeeded: int
    failed: int
    running: int
    waiting: int


class ExecutionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    workflow_id: uuid.UUID
    workflow_version: int
    status: str
    input: dict[str, Any]
    output: Any | None
    error: dict[str, Any] | None
    attempts: int
    triggered_by: uuid.UUID | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    wake_at: datetime | None = None
    parent_execution_id: uuid.UUID | None = None
    parent_step_id: str | None = None
    depth: int = 0
    trigger_kind: str | None = Field(
        default=None,
        description="api, schedule, webhook, event or retry (a re-run; none: a sub-workflow's)",
    )
    trigger_id: uuid.UUID | None = Field(default=None, description="The schedule or trigger")
    retry_of: uuid.UUID | None = Field(
        default=None, description="The execution this one re-runs (POST …/retry with a body)"
    )


class ExecutionDetail(ExecutionOut):
    steps: list[StepOut]
    approvals: list[ApprovalOut] = Field(default_factory=list)
    reruns: list[uuid.UUID] = Field(
        default_factory=list, description="Its re-runs' ids, oldest first (at most 100)"
    )


class ApprovalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    execution_id: uuid.UUID
    step_id: str
    item_index: int | None
    approvers: dict[str, Any]
    message: str
    status: str = Field(description="pending, approved, rejected or timed_out")
    decided_by: uuid.UUID | None
    comment: str | None
    requested_at: datetime
    timeout_at: datetime
    decided_at: datetime | None


COMMENT_MAX_LENGTH = 2_000


class DecisionRequest(StrictModel):
    comment: str | None = Field(default=None, max_length=COMMENT_MAX_LENGTH)


class ExecutionAccepted(BaseModel):
    execution_id: uuid.UUID
    status: str


class ExecutionPage(BaseModel):
    items: list[ExecutionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class FailedJobOut(BaseModel):
    execution_id: uuid.UUID
    workflow_id: uuid.UUID
    error: dict[str, Any] | None
    finished_at: datetime | None
    job_state: str = Field(description="The BullMQ job's state: failed, unknown (removed), …")
    failed_reason: str | None
    attempts_made: int | None
