"""Single sign-on (issue 23, ADR 0016): `sso_providers` and `sso_group_mappings` (instance-wide,
no privilege for the application role: sign-in reads them before any tenant is known),
`sso_identities` and `sso_sessions` (a person's own rows, row-level security by user);
`organizations.sso_required` with its break-glass owner, and `memberships.sso_provider_id`
(the provider whose group mapping granted the role).

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None
# New tables and nullable or defaulted columns: the previous release neither reads nor writes
# them, and its inserts into organizations and memberships still succeed.
breaks_previous = False

USER = "app_current_user()"


def _uuid(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, postgresql.UUID(as_uuid=True), nullable=nullable)


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
    )


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def _owner_only(table: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(
        f"CREATE POLICY owner_only ON {table} AS PERMISSIVE FOR ALL TO PUBLIC "
        f"USING (user_id = {USER}) WITH CHECK (user_id = {USER})"
    )


def upgrade() -> None:
    op.create_table(
        "sso_providers",
        _uuid("id"),
        sa.Column("slug", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("client_id", sa.String(length=500), nullable=False),
        sa.Column("secret_key_id", sa.String(length=64), nullable=False),
        sa.Column("secret_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("scopes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("groups_claim", sa.String(length=200), nullable=True),
        sa.Column(
            "email_verified_claim",
            sa.String(length=200),
            server_default="email_verified",
            nullable=False,
        ),
        sa.Column(
            "verified_email_domains",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("jit", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default="true", nullable=False),
        sa.Column("algorithms", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        _created_at(),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_providers")),
        sa.UniqueConstraint("slug", name=op.f("uq_sso_providers_slug")),
    )
    op.create_table(
        "sso_group_mappings",
        _uuid("id"),
        _uuid("provider_id"),
        sa.Column("group_name", sa.String(length=1000), nullable=False),
        _uuid("org_id"),
        sa.Column("role", sa.Text(), nullable=False),
        _created_at(),
        sa.CheckConstraint(
            "role in ('viewer', 'member', 'admin')",
            name=op.f("ck_sso_group_mappings_role_mappable"),
        ),
        _fk("sso_group_mappings", "provider_id", "sso_providers", "CASCADE"),
        _fk("sso_group_mappings", "org_id", "organizations", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_group_mappings")),
        sa.UniqueConstraint(
            "provider_id",
            "group_name",
            "org_id",
            name=op.f("uq_sso_group_mappings_provider_id_group_name_org_id"),
        ),
    )
    op.create_index("ix_sso_group_mappings_org_id", "sso_group_mappings", ["org_id"])
    op.create_table(
        "sso_identities",
        _uuid("id"),
        _uuid("provider_id"),
        sa.Column("subject", sa.String(length=255), nullable=False),
        _uuid("user_id"),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column(
            "groups", postgresql.JSONB(astext_type=sa.Text()), server_default="[]", nullable=False
        ),
        _created_at(),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        _fk("sso_identities", "provider_id", "sso_providers", "CASCADE"),
        _fk("sso_identities", "user_id", "users", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_identities")),
        sa.UniqueConstraint(
            "provider_id", "subject", name=op.f("uq_sso_identities_provider_id_subject")
        ),
    )
    op.create_index("ix_sso_identities_user_id", "sso_identities", ["user_id"])
    _owner_only("sso_identities")
    op.create_table(
        "sso_sessions",
        _uuid("id"),
        _uuid("session_id"),
        _uuid("user_id"),
        _uuid("provider_id"),
        _uuid("identity_id"),
        sa.Column("tokens_key_id", sa.String(length=64), nullable=False),
        sa.Column("tokens_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("offline", sa.Boolean(), server_default="false", nullable=False),
        _created_at(),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        _fk("sso_sessions", "session_id", "sessions", "CASCADE"),
        _fk("sso_sessions", "user_id", "users", "CASCADE"),
        _fk("sso_sessions", "provider_id", "sso_providers", "CASCADE"),
        _fk("sso_sessions", "identity_id", "sso_identities", "CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sso_sessions")),
    )
    op.create_index("ix_sso_sessions_session_id", "sso_sessions", ["session_id"])
    op.create_index("ix_sso_sessions_user_id", "sso_sessions", ["user_id"])
    op.create_index("ix_sso_sessions_provider_id", "sso_sessions", ["provider_id"])
    _owner_only("sso_sessions")

    op.add_column(
        "organizations",
        sa.Column("sso_required", sa.Boolean(), server_default="false", nullable=False),
    )
    op.add_column("organizations", _uuid("sso_break_glass_user_id", nullable=True))
    op.create_foreign_key(
        op.f("fk_organizations_sso_break_glass_user_id_users"),
        "organizations",
        "users",
        ["sso_break_glass_user_id"],
        ["id"],
        ondelete="SET NULL",
    )
    op.add_column("memberships", _uuid("sso_provider_id", nullable=True))
    op.create_foreign_key(
        op.f("fk_memberships_sso_provider_id_sso_providers"),
        "memberships",
        "sso_providers",
        ["sso_provider_id"],
        ["id"],
        ondelete="SET NULL",
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("fk_memberships_sso_provider_id_sso_providers"), "memberships", type_="foreignkey"
    )
    op.drop_column("memberships", "sso_provider_id")
    op.drop_constraint(
        op.f("fk_organizations_sso_break_glass_user_id_users"), "organizations", type_="foreignkey"
    )
    op.drop_column("organizations", "sso_break_glass_user_id")
    op.drop_column("organizations", "sso_required")
    op.drop_table("sso_sessions")
    op.drop_table("sso_identities")
    op.drop_table("sso_group_mappings")
    op.drop_table("sso_providers")
