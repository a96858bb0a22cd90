"""Executions keep the definition they run; a partial index for the reconciler's scan.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None
breaks_previous = True  # a NOT NULL column the previous release does not write


def upgrade() -> None:
    op.add_column(
        "workflow_executions",
        sa.Column(
            "definition",
            postgresql.JSONB(astext_type=sa.Text()),
            nullable=False,
            server_default=sa.text("'{}'::jsonb"),
        ),
    )
    # Existing rows got '{}'; new rows must say what they run.
    op.alter_column("workflow_executions", "definition", server_default=None)
    op.create_index(
        "ix_workflow_executions_unfinished",
        "workflow_executions",
        ["created_at"],
        postgresql_where=sa.text("status in ('queued', 'running')"),
    )


def downgrade() -> None:
    op.drop_index("ix_workflow_executions_unfinished", table_name="workflow_executions")
    op.drop_column("workflow_executions", "definition")
