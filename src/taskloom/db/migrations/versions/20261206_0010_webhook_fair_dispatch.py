"""Webhooks: the outbox is dispatched per organization (at most WEBHOOK_MAX_QUEUED_PER_ORG of an
organization's deliveries in the queue at once), so its partial indexes lead with `org_id`: the
dispatcher walks the organizations that have pending rows (a loose index scan) and counts each
one's queued rows, instead of taking the 500 oldest rows of whoever wrote most.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None
breaks_previous = False  # indexes rebuilt with another column order


def upgrade() -> None:
    op.drop_index("ix_webhook_deliveries_pending", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["org_id", "created_at"],
        postgresql_where="status = 'pending'",
    )
    op.create_index(
        "ix_webhook_deliveries_queued_org_id",
        "webhook_deliveries",
        ["org_id"],
        postgresql_where="status = 'queued'",
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_queued_org_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_pending", table_name="webhook_deliveries")
    op.create_index(
        "ix_webhook_deliveries_pending",
        "webhook_deliveries",
        ["created_at"],
        postgresql_where="status = 'pending'",
    )
