"""Queued GDPR exports: a one-time download link on the request, the archive in chunks.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None
breaks_previous = False  # nullable columns and a new table


def upgrade() -> None:
    op.add_column("gdpr_requests", sa.Column("download_token_hash", sa.String(64), nullable=True))
    op.add_column(
        "gdpr_requests", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "gdpr_requests", sa.Column("downloaded_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "gdpr_export_files",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("request_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["gdpr_requests.id"],
            name=op.f("fk_gdpr_export_files_request_id_gdpr_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_gdpr_export_files")),
        sa.UniqueConstraint("request_id", "seq", name=op.f("uq_gdpr_export_files_request_id_seq")),
    )
    # Defence in depth: the application role has no privilege on it, and RLS without a policy
    # would show it nothing anyway.
    op.execute("ALTER TABLE gdpr_export_files ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE gdpr_export_files FORCE ROW LEVEL SECURITY")


def downgrade() -> None:
    op.drop_table("gdpr_export_files")
    op.drop_column("gdpr_requests", "downloaded_at")
    op.drop_column("gdpr_requests", "expires_at")
    op.drop_column("gdpr_requests", "download_token_hash")
