"""Budgets per workflow and per execution (issue 22): `workflows.monthly_budget_usd`, the
workflow's month rows in `ai_workflow_budget_months` (spent and reserved, counted like the
organization's), the workflow each `ai_usage` row counted against, and on both month rows the
highest `budget.threshold` percent already announced that month.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None
# Nullable columns, columns with defaults and a new table: the previous release neither reads
# nor writes them (its calls count against the organization only).
breaks_previous = False


def upgrade() -> None:
    op.add_column("workflows", sa.Column("monthly_budget_usd", sa.Numeric(12, 2), nullable=True))
    op.add_column(
        "ai_usage", sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=True)
    )
    op.add_column(
        "ai_budget_months",
        sa.Column("notified_percent", sa.SmallInteger(), server_default="0", nullable=False),
    )
    op.create_table(
        "ai_workflow_budget_months",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("workflow_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("spent_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
        sa.Column("reserved_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
        sa.Column("notified_percent", sa.SmallInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_ai_workflow_budget_months_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_ai_workflow_budget_months_workflow_id_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_workflow_budget_months")),
        sa.UniqueConstraint(
            "workflow_id", "month", name=op.f("uq_ai_workflow_budget_months_workflow_id_month")
        ),
    )
    op.create_index(
        "ix_ai_workflow_budget_months_org_id_month",
        "ai_workflow_budget_months",
        ["org_id", "month"],
        unique=False,
    )
    op.execute("ALTER TABLE ai_workflow_budget_months ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE ai_workflow_budget_months FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON ai_workflow_budget_months AS PERMISSIVE FOR ALL "
        "TO PUBLIC USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )


def downgrade() -> None:
    op.drop_index(
        "ix_ai_workflow_budget_months_org_id_month", table_name="ai_workflow_budget_months"
    )
    op.drop_table("ai_workflow_budget_months")
    op.drop_column("ai_budget_months", "notified_percent")
    op.drop_column("ai_usage", "workflow_id")
    op.drop_column("workflows", "monthly_budget_usd")
