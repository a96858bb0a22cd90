"""For-each items get rows of their own (ADR 0008): `execution_step_items`, one row per item of
a `for_each` step, unique on (execution, step, item index), so a resumed execution re-runs only
the items that had not finished. `execution_steps` keeps its unique (execution, step): the
previous release's workers upsert on it during a rolling upgrade.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table; the previous release neither reads nor writes it


def upgrade() -> None:
    op.create_table(
        "execution_step_items",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("output", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'running', 'succeeded', 'failed', 'skipped')",
            name=op.f("ck_execution_step_items_status_valid"),
        ),
        sa.CheckConstraint("item_index >= 0", name=op.f("ck_execution_step_items_item_index")),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_execution_step_items_execution_id_workflow_executions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_execution_step_items_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_step_items")),
        sa.UniqueConstraint(
            "execution_id",
            "step_id",
            "item_index",
            name=op.f("uq_execution_step_items_execution_id_step_id_item_index"),
        ),
    )
    op.create_index("ix_execution_step_items_org_id", "execution_step_items", ["org_id"])
    op.execute("ALTER TABLE execution_step_items ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE execution_step_items FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON execution_step_items AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )


def downgrade() -> None:
    op.drop_index("ix_execution_step_items_org_id", table_name="execution_step_items")
    op.drop_table("execution_step_items")
