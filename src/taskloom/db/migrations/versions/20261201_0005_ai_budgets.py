"""AI budgets: per-organization monthly spend with reservations for calls in flight.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table, an index and a column with a default


def upgrade() -> None:
    op.add_column(
        "ai_usage",
        sa.Column("reserved_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
    )
    # Pending reservations are found by the reconciler's housekeeping (across organizations).
    op.create_index(
        "ix_ai_usage_pending",
        "ai_usage",
        ["created_at"],
        postgresql_where=sa.text("outcome = 'pending'"),
    )
    op.create_table(
        "ai_budget_months",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("spent_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
        sa.Column("reserved_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_ai_budget_months_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_budget_months")),
        sa.UniqueConstraint("org_id", "month", name=op.f("uq_ai_budget_months_org_id_month")),
    )
    op.execute("ALTER TABLE ai_budget_months ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE ai_budget_months FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON ai_budget_months AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )


def downgrade() -> None:
    op.drop_table("ai_budget_months")
    op.drop_index("ix_ai_usage_pending", table_name="ai_usage")
    op.drop_column("ai_usage", "reserved_usd")
