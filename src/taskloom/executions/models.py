"""Executions (runs of a workflow's definition) and execution steps (one row per step run)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, uuid_pk
from taskloom.db.rls import Scope


class ExecutionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # parked by a wait, an approval or a child: no job, no slot
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


def _values(enum: type[StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum)


class WorkflowExecution(Base, rls=Scope.ORG):
    __tablename__ = "workflow_executions"
    __table_args__ = (
        CheckConstraint(f"status in ({_values(ExecutionStatus)})", name="status_valid"),
        Index("ix_workflow_executions_org_id_created_at", "org_id", "created_at"),
        Index("ix_workflow_executions_org_id_status", "org_id", "status"),
        Index("ix_workflow_executions_workflow_id_created_at", "workflow_id", "created_at"),
        Index("ix_workflow_executions_triggered_by", "triggered_by"),
        # The reconciler's scan: only executions that are not finished.
        Index(
            "ix_workflow_executions_unfinished",
            "created_at",
            postgresql_where="status in ('queued', 'running')",
        ),
        # The retention purge's scan: finished executions by age (migration 0012).
        Index(
            "ix_workflow_executions_finished_terminal",
            "finished_at",
            postgresql_where="status IN ('succeeded', 'failed', 'cancelled')",
        ),
        # The waker's scan: waiting executions by the time they must be looked at (0014).
        Index("ix_workflow_executions_waiting", "wake_at", postgresql_where="status = 'waiting'"),
        Index(
            "ix_workflow_executions_parent_execution_id",
            "parent_execution_id",
            postgresql_where="parent_execution_id IS NOT NULL",
        ),
        Index(
            "ix_workflow_executions_root_execution_id",
            "root_execution_id",
            postgresql_where="root_execution_id IS NOT NULL",
        ),
        Index(
            "ix_workflow_executions_retry_of",
            "retry_of",
            postgresql_where="retry_of IS NOT NULL",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    workflow_version: Mapped[int] = mapped_column(Integer, nullable=False)
    # The definition as it was when the execution was accepted: an edit to the workflow while
    # the execution waits or runs (or a retry next week) does not change what it runs.
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    triggered_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    output: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = created_at()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # While `waiting`: when the waker must look at it again (a wait's end, an approval's
    # timeout, the deadline); None when only an event (a decision, a child's end) wakes it.
    wake_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A child execution, started by a `workflow` step of its parent (depth 1 and more).
    parent_execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=True,
    )
    parent_step_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_item_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    root_execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    depth: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    # What started it (migration 0015): `api`, `schedule`, `webhook` or `event` (None: a child,
    # or an execution from before), the schedule or trigger's id, and how many event triggers
    # led to it (a chain stops at triggers.events.MAX_CHAIN).
    trigger_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    trigger_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    trigger_depth: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default="0", default=0
    )
    # A re-run (migration 0022): the execution it re-runs, whose steps upstream of the step it
    # re-runs from were copied into this one at its start (`reused`).
    retry_of: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="SET NULL"),
        nullable=True,
    )


class IdempotencyKey(Base, rls=Scope.ORG):
    """A start's idempotency key (`Idempotency-Key` on the API, a webhook delivery's id), kept
    IDEMPOTENCY_TTL_SECONDS: the same key answers with the same execution. Unique per workflow,
    so of two concurrent starts with one key the second waits for the first's commit and finds
    its execution; held in PostgreSQL, so a Redis flush cannot let a duplicate through."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("workflow_id", "key"),
        Index("ix_idempotency_keys_org_id", "org_id"),
        Index("ix_idempotency_keys_created_at", "created_at"),
        Index("ix_idempotency_keys_execution_id", "execution_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(300), nullable=False)
    # SHA-256 of the start's input: the same key with another input is refused.
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    # Written before the execution row in the same transaction, hence checked at commit.
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey(
            "workflow_executions.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"
        ),
        nullable=False,
    )
    created_at: Mapped[datetime] = created_at()


class _StepRun:
    """What a step and a for-each item record of their runs: the columns both tables share."""

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    )
    step_id: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    input: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    output: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0", default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # While waiting: when to look again (a wait's end, an approval's timeout) or the child
    # execution it waits for.
    wake_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    child_execution_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    # Copied from the execution a re-run re-runs (`retry_of`), its recorded result kept: it
    # did not run in this execution (attempts 0).
    reused: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default="false", default=False
    )


class ExecutionStep(_StepRun, Base, rls=Scope.ORG):
    """One row per step of an execution (its last run)."""

    __tablename__ = "execution_steps"
    __table_args__ = (
        UniqueConstraint("execution_id", "step_id"),
        CheckConstraint(f"status in ({_values(StepStatus)})", name="status_valid"),
        Index("ix_execution_steps_org_id", "org_id"),
    )

    position: Mapped[int] = mapped_column(Integer, nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)


class ExecutionStepItem(_StepRun, Base, rls=Scope.ORG):
    """One item of a `for_each` step (ADR 0008): its own status, attempts and output, so a
    resumed execution re-runs only the items that had not finished."""

    __tablename__ = "execution_step_items"
    __table_args__ = (
        UniqueConstraint("execution_id", "step_id", "item_index"),
        CheckConstraint(f"status in ({_values(StepStatus)})", name="status_valid"),
        CheckConstraint("item_index >= 0", name="item_index"),
        Index("ix_execution_step_items_org_id", "org_id"),
    )

    item_index: Mapped[int] = mapped_column(Integer, nullable=False)


class ApprovalStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"


class ExecutionApproval(Base, rls=Scope.ORG):
    """One approval an `approval` step (or one of its for-each items) asked for, and its
    decision. The execution waits, holding nothing, until it is decided or times out."""

    __tablename__ = "execution_approvals"
    __table_args__ = (
        CheckConstraint(f"status in ({_values(ApprovalStatus)})", name="status_valid"),
        Index(
            "uq_execution_approvals_step_item",
            "execution_id",
            "step_id",
            text("coalesce(item_index, -1)"),
            unique=True,
        ),
        Index("ix_execution_approvals_org_id_status", "org_id", "status"),
        Index("ix_execution_approvals_decided_by", "decided_by"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    )
    step_id: Mapped[str] = mapped_column(String(64), nullable=False)
    item_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    approvers: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    decided_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    requested_at: Mapped[datetime] = created_at()
    timeout_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AgentRecordStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class AgentTurn(Base, rls=Scope.ORG):
    """One sub-step of an `agent` step (ADR 0015): a model turn (`call_index` 0) or one tool
    call the model asked for in that turn (`call_index` 1, 2, …). Each is committed the moment
    it ends, so a job that runs the step again rebuilds the conversation from these rows and
    goes on from the last one: a finished tool call is never made again, one left `running`
    (its worker died) is made once more with the same idempotency key (`attempts` 2), and not a
    third time."""

    __tablename__ = "execution_agent_turns"
    __table_args__ = (
        CheckConstraint(f"status in ({_values(AgentRecordStatus)})", name="status_valid"),
        CheckConstraint("kind in ('model', 'tool')", name="kind_valid"),
        CheckConstraint("turn >= 1 and call_index >= 0", name="position"),
        Index(
            "uq_execution_agent_turns_position",
            "execution_id",
            "step_id",
            text("coalesce(item_index, -1)"),
            "turn",
            "call_index",
            unique=True,
        ),
        Index("ix_execution_agent_turns_org_id", "org_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    execution_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    )
    step_id: Mapped[str] = mapped_column(String(64), nullable=False)
    item_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    turn: Mapped[int] = mapped_column(Integer, nullable=False)
    call_index: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1", default=1)
    # A tool call: the API's call id, the name the model saw, the connection and tool it maps
    # to, and `<execution>:<step>:<turn>:<tool_call_id>`.
    tool_call_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    tool_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    connection: Mapped[str | None] = mapped_column(String(200), nullable=True)
    tool: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(400), nullable=True)
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    output: Mapped[Any | None] = mapped_column(JSONB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    started_at: Mapped[datetime] = created_at()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
