"""What starts a workflow by itself: cron schedules (and one row per tick they fired, skipped or
failed), webhook and event triggers (secrets encrypted), and one row per trigger delivery."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, updated_at, uuid_pk
from taskloom.db.rls import Scope


def _values(enum: type[StrEnum]) -> str:
    return ", ".join(f"'{member.value}'" for member in enum)


class Overlap(StrEnum):
    SKIP = "skip"  # a tick while the previous execution runs is skipped
    ALLOW = "allow"  # it starts anyway
    QUEUE = "queue"  # it starts once the previous execution has ended


class CatchUp(StrEnum):
    NONE = "none"  # ticks missed while no worker ran are skipped
    ONE = "one"  # the newest of them runs
    ALL = "all"  # up to MAX_CATCH_UP of them run


class TickStatus(StrEnum):
    STARTED = "started"  # its execution was created
    QUEUED = "queued"  # overlap `queue`: waits for the previous execution to end
    SKIPPED = "skipped"  # overlap `skip`, or missed and not caught up
    FAILED = "failed"  # its input did not render or conform, or the organization's queue was full


class WorkflowSchedule(Base, rls=Scope.ORG):
    __tablename__ = "workflow_schedules"
    __table_args__ = (
        CheckConstraint(f"overlap in ({_values(Overlap)})", name="overlap_valid"),
        CheckConstraint(f"catch_up in ({_values(CatchUp)})", name="catch_up_valid"),
        Index("ix_workflow_schedules_org_id", "org_id"),
        Index("ix_workflow_schedules_workflow_id", "workflow_id"),
        Index("ix_workflow_schedules_created_by", "created_by"),
        # The firing loop's scan: enabled schedules by their next tick.
        Index("ix_workflow_schedules_due", "next_tick_at", postgresql_where="enabled"),
        # And the ones whose queued ticks wait for their previous execution to end.
        Index("ix_workflow_schedules_queued", "id", postgresql_where="queued_ticks > 0"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    cron: Mapped[str] = mapped_column(String(200), nullable=False)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False)
    input: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    overlap: Mapped[str] = mapped_column(String(8), nullable=False, server_default="skip")
    catch_up: Mapped[str] = mapped_column(String(8), nullable=False, server_default="none")
    # The first tick not yet handled (UTC). The firing loop moves it on in the transaction that
    # records the tick, so a tick is handled once however many workers look.
    next_tick_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="SET NULL"),
        nullable=True,
    )
    queued_ticks: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class ScheduleTick(Base, rls=Scope.ORG):
    """One tick of a schedule and what came of it; unique per (schedule, tick time), so two
    workers can never both start it."""

    __tablename__ = "schedule_ticks"
    __table_args__ = (
        UniqueConstraint("schedule_id", "tick_at"),
        CheckConstraint(f"status in ({_values(TickStatus)})", name="status_valid"),
        Index("ix_schedule_ticks_org_id", "org_id"),
        Index("ix_schedule_ticks_execution_id", "execution_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    schedule_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflow_schedules.id", ondelete="CASCADE"), nullable=False
    )
    tick_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="SET NULL"),
        nullable=True,
    )
    created_at: Mapped[datetime] = created_at()


class TriggerKind(StrEnum):
    WEBHOOK = "webhook"
    EVENT = "event"


class WorkflowTrigger(Base, rls=Scope.ORG):
    """A webhook trigger (`POST /hooks/{id}`, verified with its scheme and secret) or an event
    trigger (another workflow of the organization ended with one of `event_statuses`)."""

    __tablename__ = "workflow_triggers"
    __table_args__ = (
        CheckConstraint(f"kind in ({_values(TriggerKind)})", name="kind_valid"),
        Index("ix_workflow_triggers_org_id", "org_id"),
        Index("ix_workflow_triggers_workflow_id", "workflow_id"),
        Index("ix_workflow_triggers_created_by", "created_by"),
        # The event outbox trigger's lookup: who listens to this workflow's ends.
        Index(
            "ix_workflow_triggers_event_workflow_id",
            "event_workflow_id",
            postgresql_where="kind = 'event'",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Webhook triggers: the scheme, the answer, and the secrets (encrypted under the
    # CREDENTIAL_ENCRYPTION_KEYS key named here; the previous one valid until its expiry).
    verification: Mapped[str | None] = mapped_column(String(16), nullable=True)
    response: Mapped[str | None] = mapped_column(String(8), nullable=True)
    sync_timeout_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    secret_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    encrypted_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    encrypted_previous_secret: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    # Event triggers: the workflow whose executions' ends start this one, and which ends.
    event_workflow_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=True
    )
    event_statuses: Mapped[list[str] | None] = mapped_column(JSONB, nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # an event trigger's: written with the source's end, not yet handled
    ACCEPTED = "accepted"  # an execution was started (or an earlier one answered a replay)
    REJECTED = "rejected"  # verification, rate limit, input schema, queue full, depth, disabled


class TriggerDelivery(Base, rls=Scope.ORG):
    """One request to a webhook trigger, or one end of a watched execution for an event trigger.
    A rejected request's body is never stored."""

    __tablename__ = "trigger_deliveries"
    __table_args__ = (
        CheckConstraint(f"status in ({_values(DeliveryStatus)})", name="status_valid"),
        Index("ix_trigger_deliveries_org_id", "org_id"),
        Index("ix_trigger_deliveries_trigger_id_created_at", "trigger_id", "created_at"),
        Index(
            "ix_trigger_deliveries_trigger_id_status_created_at",
            "trigger_id",
            "status",
            "created_at",
        ),
        Index("ix_trigger_deliveries_execution_id", "execution_id"),
        # The event trigger drain's scan.
        Index("ix_trigger_deliveries_pending", "created_at", postgresql_where="status = 'pending'"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    trigger_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflow_triggers.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivery_id: Mapped[str | None] = mapped_column(String(300), nullable=True)
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="SET NULL"),
        nullable=True,
    )
    # Event triggers: the execution whose end this is.
    source_execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=True,
    )
    created_at: Mapped[datetime] = created_at()
