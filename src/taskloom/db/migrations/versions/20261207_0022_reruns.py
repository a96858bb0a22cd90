"""Re-runs (issue 21): `POST /api/executions/{id}/retry` with a body makes a new execution
linked to the one it re-runs (`workflow_executions.retry_of`, indexed for the re-runs of an
execution and for the retention purge's SET NULL), which starts with the steps upstream of the
step it re-runs from already recorded, copied from the old one (`reused` on `execution_steps`
and `execution_step_items`).

`taskloom_claim` (migration 0019) reads no step rows on a first claim, as a first run has none;
a re-run has its copied rows from the start, so its first claim reads them. Everything else
about the claim is unchanged (one more column compared on the row it already has).

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

from types import ModuleType

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from taskloom.db.migrate import earlier_migration

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None
# New nullable / defaulted columns the previous release never reads, and the same claim for
# every execution it makes (none has `retry_of`).
breaks_previous = False

_FIRST_CLAIM = "CASE WHEN e.attempts = 1 THEN"
_FIRST_CLAIM_OF_A_START = "CASE WHEN e.attempts = 1 AND e.retry_of IS NULL THEN"


def _migration_0019() -> ModuleType:
    """0019's module, whose `_CLAIM` text this migration amends (read from it, not repeated)."""
    return earlier_migration("20261207_0019_claim_in_one_write.py")


def upgrade() -> None:
    op.add_column(
        "workflow_executions",
        sa.Column("retry_of", postgresql.UUID(as_uuid=True), nullable=True),
    )
    op.create_foreign_key(
        op.f("fk_workflow_executions_retry_of_workflow_executions"),
        "workflow_executions",
        "workflow_executions",
        ["retry_of"],
        ["id"],
        ondelete="SET NULL",
    )
    op.create_index(
        "ix_workflow_executions_retry_of",
        "workflow_executions",
        ["retry_of"],
        postgresql_where=sa.text("retry_of IS NOT NULL"),
    )
    for table in ("execution_steps", "execution_step_items"):
        op.add_column(
            table, sa.Column("reused", sa.Boolean(), server_default="false", nullable=False)
        )
    claim: str = _migration_0019()._CLAIM
    assert _FIRST_CLAIM in claim  # the steps' and the items' reads, in both answers
    op.execute(claim.replace(_FIRST_CLAIM, _FIRST_CLAIM_OF_A_START))


def downgrade() -> None:
    op.execute(_migration_0019()._CLAIM)
    for table in ("execution_step_items", "execution_steps"):
        op.drop_column(table, "reused")
    op.drop_index("ix_workflow_executions_retry_of", table_name="workflow_executions")
    op.drop_constraint(
        op.f("fk_workflow_executions_retry_of_workflow_executions"),
        "workflow_executions",
        type_="foreignkey",
    )
    op.drop_column("workflow_executions", "retry_of")
