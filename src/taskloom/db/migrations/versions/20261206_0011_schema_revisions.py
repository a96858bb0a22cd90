"""Rolling upgrades: `schema_revisions` records every applied migration with its declaration
`breaks_previous` (can the previous release run on the schema it leaves?), so a process of the
previous release, which lacks the newer migration files, can tell from the database whether it
may stay ready (db/revisions.py, docs/OPERATIONS.md). The migration hook in env.py fills it,
this revision and its ancestors included, in each migration's transaction.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table the previous release never reads


def upgrade() -> None:
    op.create_table(
        "schema_revisions",
        sa.Column("revision", sa.String(length=32), nullable=False),
        sa.Column("breaks_previous", sa.Boolean(), nullable=False),
        sa.Column(
            "applied_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("revision", name=op.f("pk_schema_revisions")),
    )


def downgrade() -> None:
    op.drop_table("schema_revisions")
