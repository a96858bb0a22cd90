"""Invitations: members join an organization by accepting an invitation to their email address,
instead of being added by an admin without their consent.

Row-level security: the organization's rows (`org_id = app_current_org()`) for everything, and,
for reading only, the rows addressed to the current user's own email, so a person sees the
invitations they received while acting in any organization (or none). Accepting and declining
run with the invitation's organization as the tenant, after the service has checked the address.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
breaks_previous = False  # a new table

ORG = "app_current_org()"
MY_EMAIL = "(SELECT lower(u.email) FROM users u WHERE u.id = app_current_user())"


def _policy(name: str, command: str, using: str | None, check: str | None) -> None:
    sql = f"CREATE POLICY {name} ON invitations AS PERMISSIVE FOR {command} TO PUBLIC"
    if using:
        sql += f" USING ({using})"
    if check:
        sql += f" WITH CHECK ({check})"
    op.execute(sql)


def upgrade() -> None:
    op.create_table(
        "invitations",
        sa.Column("id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("org_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("invited_by", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "role in ('viewer', 'member', 'admin')", name=op.f("ck_invitations_role_invitable")
        ),
        sa.CheckConstraint(
            "status in ('pending', 'accepted', 'declined', 'revoked', 'expired')",
            name=op.f("ck_invitations_status_valid"),
        ),
        sa.CheckConstraint("email = lower(email)", name=op.f("ck_invitations_email_normalized")),
        sa.ForeignKeyConstraint(
            ["invited_by"],
            ["users.id"],
            name=op.f("fk_invitations_invited_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_invitations_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_invitations")),
    )
    op.create_index("ix_invitations_email", "invitations", ["email"], unique=False)
    op.create_index(
        "uq_invitations_org_id_email_pending",
        "invitations",
        ["org_id", "email"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.execute("ALTER TABLE invitations ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE invitations FORCE ROW LEVEL SECURITY")
    # Reading: the organization's invitations, and those addressed to me. Only the reading
    # policy names the invitee: writing is the organization's (an invitee cannot change the
    # role of the invitation they hold, or move it).
    _policy("visible", "SELECT", f"org_id = {ORG} OR email = {MY_EMAIL}", None)
    _policy("insert", "INSERT", None, f"org_id = {ORG}")
    _policy("update", "UPDATE", f"org_id = {ORG}", f"org_id = {ORG}")
    _policy("delete", "DELETE", f"org_id = {ORG}", None)


def downgrade() -> None:
    op.drop_index("uq_invitations_org_id_email_pending", table_name="invitations")
    op.drop_index("ix_invitations_email", table_name="invitations")
    op.drop_table("invitations")
