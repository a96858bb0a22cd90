"""Request and response bodies of /api/workflows/{id}/execute, /api/executions and
/api/queue/failed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from taskloom.auth.schemas import StrictModel


class ExecuteRequest(StrictModel):
    input: dict[str, Any] = Field(default_factory=dict)


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
    items: ItemsProgress | None = Field(
        default=None, description="A for_each step's items by status (None for other steps)"
    )


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
        default=None, description="api, schedule, webhook or event (none: a sub-workflow's)"
    )
    trigger_id: uuid.UUID | None = Field(default=None, description="The schedule or trigger")


class ExecutionDetail(ExecutionOut):
    steps: list[StepOut]
    approvals: list[ApprovalOut] = Field(default_factory=list)


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
