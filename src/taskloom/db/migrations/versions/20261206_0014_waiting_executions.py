"""Executions that wait (ADR 0008): the status `waiting` (an execution parked by a `wait`, an
`approval` or a `workflow` step holds no job and no slot) with the time it must be looked at
again (`wake_at`, indexed for the waker); child executions (`parent_execution_id`, the step and
item that started them, the root and the depth); steps and items that wait (`waiting`, their
`wake_at`, the child they wait for); and `execution_approvals`, one row per approval asked.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None
# New columns are nullable or defaulted and the previous release never writes `waiting`; a
# previous worker handed a waiting execution's job would only find it not queued and skip it.
breaks_previous = False

_EXECUTION_STATUSES = "'queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled'"
_STEP_STATUSES = "'pending', 'running', 'waiting', 'succeeded', 'failed', 'skipped'"


def upgrade() -> None:
    op.drop_constraint(op.f("ck_workflow_executions_status_valid"), "workflow_executions")
    op.create_check_constraint(
        op.f("ck_workflow_executions_status_valid"),
        "workflow_executions",
        f"status in ({_EXECUTION_STATUSES})",
    )
    for table in ("execution_steps", "execution_step_items"):
        op.drop_constraint(op.f(f"ck_{table}_status_valid"), table)
        op.create_check_constraint(
            op.f(f"ck_{table}_status_valid"), table, f"status in ({_STEP_STATUSES})"
        )
        op.add_column(table, sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True))
        op.add_column(
            table, sa.Column("child_execution_id", postgresql.UUID(as_uuid=True), nullable=True)
        )

    op.add_column(
        "workflow_executions", sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "workflow_executions",
        sa.Column("parent_execution_id", postgresql.UUID(as_uuid=True), nullable=True),
    )
    op.add_column(
        "workflow_executions", sa.Column("parent_step_id", sa.String(length=64), nullable=True)
    )
    op.add_column(
        "workflow_executions", sa.Column("parent_item_index", sa.Integer(), nullable=True)
    )
    op.add_column(
        "workflow_executions",
        sa.Column("root_execution_id", postgresql.UUID(as_uuid=True), nullable=True),
    )
    op.add_column(
        "workflow_executions",
        sa.Column("depth", sa.Integer(), server_default="0", nullable=False),
    )
    op.create_foreign_key(
        op.f("fk_workflow_executions_parent_execution_id_workflow_executions"),
        "workflow_executions",
        "workflow_executions",
        ["parent_execution_id"],
        ["id"],
        ondelete="CASCADE",
    )
    op.create_index(
        "ix_workflow_executions_waiting",
        "workflow_executions",
        ["wake_at"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.create_index(
        "ix_workflow_executions_parent_execution_id",
        "workflow_executions",
        ["parent_execution_id"],
        postgresql_where=sa.text("parent_execution_id IS NOT NULL"),
    )
    op.create_index(
        "ix_workflow_executions_root_execution_id",
        "workflow_executions",
        ["root_execution_id"],
        postgresql_where=sa.text("root_execution_id IS NOT NULL"),
    )

    op.create_table(
        "execution_approvals",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("execution_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=True),
        sa.Column("approvers", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("message", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decided_by", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column(
            "requested_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status in ('pending', 'approved', 'rejected', 'timed_out')",
            name=op.f("ck_execution_approvals_status_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name=op.f("fk_execution_approvals_execution_id_workflow_executions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_execution_approvals_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["decided_by"],
            ["users.id"],
            name=op.f("fk_execution_approvals_decided_by_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_execution_approvals")),
    )
    op.create_index(
        "uq_execution_approvals_step_item",
        "execution_approvals",
        ["execution_id", "step_id", sa.text("coalesce(item_index, -1)")],
        unique=True,
    )
    op.create_index(
        "ix_execution_approvals_org_id_status", "execution_approvals", ["org_id", "status"]
    )
    op.create_index("ix_execution_approvals_decided_by", "execution_approvals", ["decided_by"])
    op.execute("ALTER TABLE execution_approvals ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE execution_approvals FORCE ROW LEVEL SECURITY")
    op.execute(
        "CREATE POLICY tenant_isolation ON execution_approvals AS PERMISSIVE FOR ALL TO PUBLIC "
        "USING (org_id = app_current_org()) WITH CHECK (org_id = app_current_org())"
    )


def downgrade() -> None:
    op.drop_table("execution_approvals")
    op.drop_index("ix_workflow_executions_root_execution_id", table_name="workflow_executions")
    op.drop_index("ix_workflow_executions_parent_execution_id", table_name="workflow_executions")
    op.drop_index("ix_workflow_executions_waiting", table_name="workflow_executions")
    op.drop_constraint(
        op.f("fk_workflow_executions_parent_execution_id_workflow_executions"),
        "workflow_executions",
    )
    for column in (
        "depth",
        "root_execution_id",
        "parent_item_index",
        "parent_step_id",
        "parent_execution_id",
        "wake_at",
    ):
        op.drop_column("workflow_executions", column)
    for table in ("execution_steps", "execution_step_items"):
        op.drop_column(table, "child_execution_id")
        op.drop_column(table, "wake_at")
        op.drop_constraint(op.f(f"ck_{table}_status_valid"), table)
        op.create_check_constraint(
            op.f(f"ck_{table}_status_valid"),
            table,
            "status in ('pending', 'running', 'succeeded', 'failed', 'skipped')",
        )
    op.drop_constraint(op.f("ck_workflow_executions_status_valid"), "workflow_executions")
    op.create_check_constraint(
        op.f("ck_workflow_executions_status_valid"),
        "workflow_executions",
        "status in ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
    )
