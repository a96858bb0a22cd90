"""Execution retention (EXECUTION_RETENTION_DAYS): `ai_usage_daily` keeps what the purged
`ai_usage` rows said, per organization, day, provider and model (no user, no execution); and
two indexes let the purge find its rows without scanning: terminal executions by `finished_at`,
and execution events' webhook deliveries by the execution id in their payload.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table and two indexes; the previous release reads neither

_TERMINAL = "status IN ('succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "ai_usage_daily",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("cost_usd", sa.Numeric(16, 6), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_ai_usage_daily_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_usage_daily")),
        sa.UniqueConstraint(
            "org_id", "day", "provider", "model", name=op.f("uq_ai_usage_daily_org_id_day_provider")
        ),
    )
    op.execute("ALTER TABLE ai_usage_daily ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE ai_usage_daily FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON ai_usage_daily AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )
    op.create_index(
        "ix_workflow_executions_finished_terminal",
        "workflow_executions",
        ["finished_at"],
        postgresql_where=sa.text(_TERMINAL),
    )
    op.create_index(
        "ix_webhook_deliveries_execution_id",
        "webhook_deliveries",
        [sa.text("((payload -> 'data'::text) ->> 'execution_id'::text)")],
        postgresql_where=sa.text("payload IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_execution_id", table_name="webhook_deliveries")
    op.drop_index("ix_workflow_executions_finished_terminal", table_name="workflow_executions")
    op.drop_table("ai_usage_daily")
