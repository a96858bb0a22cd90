"""Workflows as code (issue 21): `workflows.key`, the slug a workflow file names its workflow by
(`push` and `pull` match on it, since names are not unique). Optional; unique in an
organization where set (a partial unique index). The table's row-level security and grants
cover the new column as they cover the others.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None
breaks_previous = False  # a nullable column the previous release neither reads nor writes


def upgrade() -> None:
    op.add_column("workflows", sa.Column("key", sa.String(length=63), nullable=True))
    op.create_index(
        "uq_workflows_org_id_key",
        "workflows",
        ["org_id", "key"],
        unique=True,
        postgresql_where=sa.text("key is not null"),
    )


def downgrade() -> None:
    op.drop_index("uq_workflows_org_id_key", table_name="workflows")
    op.drop_column("workflows", "key")
