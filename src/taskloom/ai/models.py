"""One `ai_usage` row per model call: who, what, how many tokens, what it cost; and the month
rows the budgets count in (ai/budget.py): the organization's and each workflow's."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, uuid_pk
from taskloom.db.rls import Scope


class AiUsage(Base, rls=Scope.ORG):
    __tablename__ = "ai_usage"
    __table_args__ = (
        Index("ix_ai_usage_org_id_created_at", "org_id", "created_at"),
        Index("ix_ai_usage_user_id", "user_id"),
        Index("ix_ai_usage_execution_id", "execution_id"),
        Index("ix_ai_usage_pending", "created_at", postgresql_where=text("outcome = 'pending'")),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    # The user who triggered the execution that made the call.
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    execution_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("workflow_executions.id", ondelete="SET NULL"),
        nullable=True,
    )
    step_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The workflow whose monthly budget the call counted against (its execution's), so settling
    # and releasing find its month row even once the execution is purged. Not a foreign key:
    # a deleted workflow takes its month rows along, and its calls stay in the history.
    workflow_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    category: Mapped[str | None] = mapped_column(String(32), nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    # Worst-case cost held in ai_budget_months while the call runs (outcome "pending"); 0 after.
    reserved_usd: Mapped[Decimal] = mapped_column(
        Numeric(14, 6), nullable=False, server_default="0"
    )
    latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    outcome: Mapped[str] = mapped_column(String(32), nullable=False)
    # Made with the instance's key (ANTHROPIC_API_KEY / OPENAI_API_KEY), not the organization's.
    instance_key: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    downgraded_from: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = created_at()


class AiUsageDaily(Base, rls=Scope.ORG):
    """What purged `ai_usage` rows said, summed per organization, day (UTC), provider and model:
    the execution retention (EXECUTION_RETENTION_DAYS) keeps the spending history without the
    calls. No user and no execution: these rows are the organization's, not anyone's data."""

    __tablename__ = "ai_usage_daily"
    __table_args__ = (
        UniqueConstraint(
            "org_id", "day", "provider", "model", name="uq_ai_usage_daily_org_id_day_provider"
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    day: Mapped[date] = mapped_column(Date, nullable=False)
    provider: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(128), nullable=False)
    calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    input_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    output_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Numeric(16, 6), nullable=False, server_default="0")


class AiBudgetMonth(Base, rls=Scope.ORG):
    """What an organization has spent and has reserved for calls in flight, per calendar month
    (UTC). A call reserves its worst-case cost here under the row's lock, so two calls can never
    both take the last dollar; settling moves the actual cost from reserved to spent. Calls made
    with the instance's key are also counted in the `instance_key_*` columns, against
    AI_INSTANCE_KEY_MONTHLY_BUDGET_USD. `notified_percent` is the highest `budget.threshold`
    (50, 80, 100) already announced for the month."""

    __tablename__ = "ai_budget_months"
    __table_args__ = (UniqueConstraint("org_id", "month"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    month: Mapped[date] = mapped_column(Date, nullable=False)  # the month's first day (UTC)
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    reserved_usd: Mapped[Decimal] = mapped_column(
        Numeric(14, 6), nullable=False, server_default="0"
    )
    instance_key_spent_usd: Mapped[Decimal] = mapped_column(
        Numeric(14, 6), nullable=False, server_default="0"
    )
    instance_key_reserved_usd: Mapped[Decimal] = mapped_column(
        Numeric(14, 6), nullable=False, server_default="0"
    )
    notified_percent: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")


class AiWorkflowBudgetMonth(Base, rls=Scope.ORG):
    """What one workflow's executions have spent and have reserved, per calendar month (UTC),
    against the workflow's `monthly_budget_usd`: locked and updated in the same transactions as
    the organization's row (always after it), so the two never disagree."""

    __tablename__ = "ai_workflow_budget_months"
    __table_args__ = (
        UniqueConstraint("workflow_id", "month"),
        Index("ix_ai_workflow_budget_months_org_id_month", "org_id", "month"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    workflow_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("workflows.id", ondelete="CASCADE"), nullable=False
    )
    month: Mapped[date] = mapped_column(Date, nullable=False)  # the month's first day (UTC)
    spent_usd: Mapped[Decimal] = mapped_column(Numeric(14, 6), nullable=False, server_default="0")
    reserved_usd: Mapped[Decimal] = mapped_column(
        Numeric(14, 6), nullable=False, server_default="0"
    )
    notified_percent: Mapped[int] = mapped_column(SmallInteger, nullable=False, server_default="0")
