"""Workflows: the definitions an organization saves, and the immutable version stored by each
create and replacement (their executions are in executions/)."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
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

from taskloom.db.base import Base, created_at, updated_at, uuid_pk
from taskloom.db.rls import AppAccess, Scope


class Workflow(Base, rls=Scope.ORG):
    __tablename__ = "workflows"
    __table_args__ = (
        Index("ix_workflows_org_id_created_at", "org_id", "created_at"),
        # `key` names the workflow in files (workflows as code): unique in its organization
        # when set; existing workflows have none until a push or an edit gives them one.
        Index(
            "uq_workflows_org_id_key",
            "org_id",
            "key",
            unique=True,
            postgresql_where=text("key is not null"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str | None] = mapped_column(String(63), nullable=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1", default=1)
    # A disabled workflow starts from no trigger, and a manual start is refused (409).
    enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default="true", default=True
    )
    # AI spend of its executions per calendar month (UTC), set by admins (PUT
    # /api/ai/workflows/{id}/budget, ai/service.py); null: only the organization's budget.
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(12, 2), nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    updated_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class WorkflowVersion(Base, rls=Scope.ORG, app_access=AppAccess.APPEND_ONLY):
    """What one create, `PUT` or restore of a workflow saved: its name, description and
    definition, and a snapshot of its triggers and schedules (triggers/snapshot.py; never a
    secret). Append-only: the application role may insert and read, never change or delete
    (a workflow's deletion removes its versions through the foreign key)."""

    __tablename__ = "workflow_versions"
    __table_args__ = (
        UniqueConstraint("workflow_id", "number"),
        Index("ix_workflow_versions_org_id", "org_id"),
        Index("ix_workflow_versions_created_by", "created_by"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)  # the workflow's `version`
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    triggers: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default="[]"
    )
    schedules: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default="[]"
    )
    message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    restored_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
