"""The audit trail: one row per mutating request or auth event, hash-chained per organization."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, String, text
from sqlalchemy.dialects.postgresql import INET, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, uuid_pk
from taskloom.db.rls import AppAccess, Scope


class AuditLog(Base, rls=Scope.SPECIAL, app_access=AppAccess.APPEND_ONLY):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("uq_audit_logs_org_id_seq", "org_id", "seq", unique=True),
        # Events that belong to no organization form one instance-wide chain.
        Index(
            "uq_audit_logs_instance_seq",
            "seq",
            unique=True,
            postgresql_where=text("org_id IS NULL"),
        ),
        Index("ix_audit_logs_org_id_created_at", "org_id", "created_at"),
        Index("ix_audit_logs_actor_user_id_created_at", "actor_user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    created_at: Mapped[datetime] = created_at()
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    actor_api_key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True), nullable=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    resource_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resource_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ip: Mapped[str | None] = mapped_column(INET, nullable=True)
    user_agent: Mapped[str | None] = mapped_column(String(512), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    success: Mapped[bool] = mapped_column(Boolean, nullable=False)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    # The hash chain covers the row's content through a salted digest (ADR 0004): erasing a
    # person destroys the salt and the personal fields, the digest keeps the chain verifiable.
    content_salt: Mapped[str | None] = mapped_column(String(32), nullable=True)
    content_digest: Mapped[str] = mapped_column(String(64), nullable=False)
    redacted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    actor_pseudonym: Mapped[str | None] = mapped_column(String(64), nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)


class AuditChainHead(Base, rls=Scope.ORG):
    """The last seq and hash of each chain, updated with every append, so that rows cut off
    the end of a chain are detected too (a walk from the genesis alone cannot see that)."""

    __tablename__ = "audit_chain_heads"

    id: Mapped[uuid.UUID] = uuid_pk()
    chain: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    org_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True
    )
    last_seq: Mapped[int] = mapped_column(BigInteger, nullable=False)
    last_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    updated_at: Mapped[datetime] = created_at()
