"""AI budgets: what each organization spends on the instance's own key, counted apart from its
spend on its own connections, for AI_INSTANCE_KEY_MONTHLY_BUDGET_USD.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
breaks_previous = False  # columns with defaults the previous release never reads
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Whether the call used the instance's key (settling moves its cost in both counters).
    op.add_column(
        "ai_usage",
        sa.Column("instance_key", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column(
        "ai_budget_months",
        sa.Column("instance_key_spent_usd", sa.Numeric(14, 6), server_default="0", nullable=False),
    )
    op.add_column(
        "ai_budget_months",
        sa.Column(
            "instance_key_reserved_usd", sa.Numeric(14, 6), server_default="0", nullable=False
        ),
    )


def downgrade() -> None:
    op.drop_column("ai_budget_months", "instance_key_reserved_usd")
    op.drop_column("ai_budget_months", "instance_key_spent_usd")
    op.drop_column("ai_usage", "instance_key")
