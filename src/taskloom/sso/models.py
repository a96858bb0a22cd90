"""Identity providers (instance-wide), their group-to-role mappings, the identities people sign
in with, and the provider tokens kept for a Taskloom session that SSO started (ADR 0016)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, updated_at, uuid_pk
from taskloom.db.rls import AppAccess, Scope

SLUG_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
# Roles a group may grant: never owner.
MAPPABLE_ROLES = ("viewer", "member", "admin")


class SsoProvider(
    Base,
    shared="identity providers of the whole instance; only instance administrators change them",
    app_access=AppAccess.NONE,
):
    __tablename__ = "sso_providers"

    id: Mapped[uuid.UUID] = uuid_pk()
    slug: Mapped[str] = mapped_column(String(63), nullable=False, unique=True)
    display_name: Mapped[str] = mapped_column(String(200), nullable=False)
    issuer: Mapped[str] = mapped_column(String(500), nullable=False)
    client_id: Mapped[str] = mapped_column(String(500), nullable=False)
    # {"client_secret": "..."} under CREDENTIAL_ENCRYPTION_KEYS, bound to this row.
    secret_key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    secret_encrypted: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    scopes: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    groups_claim: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The claim that promises the e-mail address is verified (Entra ID: xms_edov).
    email_verified_claim: Mapped[str] = mapped_column(
        String(200), nullable=False, server_default="email_verified"
    )
    # Domains whose addresses this provider only ever asserts verified (no claim needed).
    verified_email_domains: Mapped[list[str]] = mapped_column(
        JSONB, nullable=False, server_default="[]", default=list
    )
    jit: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="true")
    # ID-token signature algorithms accepted (asymmetric only).
    algorithms: Mapped[list[str]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()

    def secret_bound_to(self) -> str:
        return f"sso_providers:{self.id}:client_secret"


class SsoGroupMapping(
    Base,
    shared="which provider groups grant which role in which organization; instance "
    "administrators set them, sign-in reads them before any tenant is known",
    app_access=AppAccess.NONE,
):
    __tablename__ = "sso_group_mappings"
    __table_args__ = (
        UniqueConstraint("provider_id", "group_name", "org_id"),
        CheckConstraint(
            "role in (" + ", ".join(f"'{r}'" for r in MAPPABLE_ROLES) + ")", name="role_mappable"
        ),
        Index("ix_sso_group_mappings_org_id", "org_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sso_providers.id", ondelete="CASCADE"), nullable=False
    )
    group_name: Mapped[str] = mapped_column(String(1000), nullable=False)
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = created_at()


class SsoIdentity(Base, rls=Scope.USER):
    """A person as a provider knows them: (provider, subject) -> user, linked once."""

    __tablename__ = "sso_identities"
    __table_args__ = (
        UniqueConstraint("provider_id", "subject"),
        Index("ix_sso_identities_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    provider_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sso_providers.id", ondelete="CASCADE"), nullable=False
    )
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    # The groups the provider sent at the last sign-in or refresh.
    groups: Mapped[list[str]] = mapped_column(JSONB, nullable=False, server_default="[]")
    created_at: Mapped[datetime] = created_at()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SsoSession(Base, rls=Scope.USER):
    """The provider side of a Taskloom session that SSO started: its tokens (encrypted, bound to
    this row) for the group check at each refresh and the RP-initiated logout."""

    __tablename__ = "sso_sessions"
    __table_args__ = (
        Index("ix_sso_sessions_session_id", "session_id"),
        Index("ix_sso_sessions_user_id", "user_id"),
        Index("ix_sso_sessions_provider_id", "provider_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True),
        ForeignKey("sessions.id", ondelete="CASCADE"),
        nullable=False,
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    provider_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sso_providers.id", ondelete="CASCADE"), nullable=False
    )
    identity_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sso_identities.id", ondelete="CASCADE"), nullable=False
    )
    # {"id_token": ..., "refresh_token": ... or absent} under CREDENTIAL_ENCRYPTION_KEYS.
    tokens_key_id: Mapped[str] = mapped_column(String(64), nullable=False)
    tokens_encrypted: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    offline: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    created_at: Mapped[datetime] = created_at()
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def tokens_bound_to(self) -> str:
        return f"sso_sessions:{self.session_id}:tokens"


def token_fields(value: dict[str, Any]) -> dict[str, Any]:
    """What of a provider's token response a session keeps."""
    return {k: value[k] for k in ("id_token", "refresh_token") if value.get(k)}
