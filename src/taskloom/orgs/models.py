"""Organizations (tenants), memberships with roles, and the invitations that create memberships."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, updated_at, uuid_pk
from taskloom.db.rls import Scope


class Role(StrEnum):
    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}
ROLE_VALUES = ", ".join(f"'{r.value}'" for r in Role)
# Owner is granted only to someone who is already a member (PATCH /api/members/{user_id}).
INVITABLE_ROLES = (Role.VIEWER, Role.MEMBER, Role.ADMIN)


class InvitationStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    REVOKED = "revoked"
    # Set lazily, when a new invitation to the same email replaces one past its expires_at.
    EXPIRED = "expired"


class Organization(Base, rls=Scope.SPECIAL):
    __tablename__ = "organizations"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    slug: Mapped[str] = mapped_column(String(80), nullable=False, unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default="{}", default=dict
    )
    monthly_budget_usd: Mapped[Decimal | None] = mapped_column(Numeric(12, 2), nullable=True)
    # Members sign in through a provider that maps into this organization (taskloom/sso); a
    # password session may not act here, except the break-glass owner's.
    sso_required: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default="false", default=False
    )
    sso_break_glass_user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Membership(Base, rls=Scope.SPECIAL):
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("org_id", "user_id"),
        CheckConstraint(f"role in ({ROLE_VALUES})", name="role_valid"),
        Index("ix_memberships_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(Text, nullable=False)
    # Who added this member; kept as an explicit column so GDPR export and erasure find it.
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    # The provider whose group mapping granted the role (it sets and takes it at each sign-in);
    # NULL for a membership made by hand.
    sso_provider_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("sso_providers.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    updated_at: Mapped[datetime] = updated_at()


class Invitation(Base, rls=Scope.SPECIAL):
    """An offer of membership to an email address, which the person with that account's email
    accepts or declines. Nothing about the address is looked up when it is made, so inviting
    reveals nothing about who has an account."""

    __tablename__ = "invitations"
    __table_args__ = (
        CheckConstraint(
            "role in (" + ", ".join(f"'{r.value}'" for r in INVITABLE_ROLES) + ")",
            name="role_invitable",
        ),
        CheckConstraint(
            "status in (" + ", ".join(f"'{s.value}'" for s in InvitationStatus) + ")",
            name="status_valid",
        ),
        CheckConstraint("email = lower(email)", name="email_normalized"),
        Index("ix_invitations_email", "email"),
        # At most one open invitation per organization and address.
        Index(
            "uq_invitations_org_id_email_pending",
            "org_id",
            "email",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    role: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="pending")
    invited_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    created_at: Mapped[datetime] = created_at()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # When it was accepted, declined, revoked or marked expired.
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
