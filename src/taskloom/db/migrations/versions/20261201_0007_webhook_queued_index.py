"""Webhooks: a partial index on deliveries handed to the queue (`status = 'queued'`), which the
reconciler reads every interval to re-enqueue those whose job Redis lost.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
breaks_previous = False  # an index


def upgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_queued",
        "webhook_deliveries",
        ["created_at"],
        postgresql_where="status = 'queued'",
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_queued", table_name="webhook_deliveries")
