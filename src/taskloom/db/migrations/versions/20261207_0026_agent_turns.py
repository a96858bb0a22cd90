"""Agent steps (issue 22): `execution_agent_turns`, one row per model turn and per tool call of
an `agent` step (ADR 0015), committed as each ends so a resumed job rebuilds the conversation
from them. Unique on (execution, step, item index or -1, turn, call index); row-level security
by organization like `execution_steps`.

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table; the previous release neither reads nor writes it


def upgrade() -> None:
    op.create_table(
        "execution_agent_turns",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=True),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("call_index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="1", nullable=False),
        sa.Column("tool_call_id", sa.String(length=128), nullable=True),
        sa.Column("tool_name", sa.String(length=64), nullable=True),
        sa.Column("connection", sa.String(length=200), nullable=True),
        sa.Column("tool", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=400), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("input", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("output", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("input_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("output_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "cost_usd", sa.Numeric(precision=14, scale=6), server_default="0", nullable=False
        ),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('running', 'succeeded', 'failed')",
            name=op.f("ck_execution_agent_turns_status_valid"),
        ),
        sa.CheckConstraint(
            "kind in ('model', 'tool')", name=op.f("ck_execution_agent_turns_kind_valid")
        ),
        sa.CheckConstraint(
            "turn >= 1 and call_index >= 0", name=op.f("ck_execution_agent_turns_position")
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_execution_agent_turns_execution_id_workflow_executions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_execution_agent_turns_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_agent_turns")),
    )
    op.create_index(
        "uq_execution_agent_turns_position",
        "execution_agent_turns",
        ["execution_id", "step_id", sa.text("coalesce(item_index, -1)"), "turn", "call_index"],
        unique=True,
    )
    op.create_index("ix_execution_agent_turns_org_id", "execution_agent_turns", ["org_id"])
    op.execute("ALTER TABLE execution_agent_turns ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE execution_agent_turns FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON execution_agent_turns AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )


def downgrade() -> None:
    op.drop_index("ix_execution_agent_turns_org_id", table_name="execution_agent_turns")
    op.drop_index("uq_execution_agent_turns_position", table_name="execution_agent_turns")
    op.drop_table("execution_agent_turns")
