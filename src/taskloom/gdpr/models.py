"""A record of each GDPR request (export or erasure) and its outcome."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from taskloom.db.base import Base, created_at, uuid_pk
from taskloom.db.rls import AppAccess, Scope


class GdprRequest(Base, rls=Scope.USER):
    __tablename__ = "gdpr_requests"
    __table_args__ = (
        CheckConstraint("kind in ('export', 'erasure')", name="kind_valid"),
        Index("ix_gdpr_requests_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    # The data subject; set to NULL by erasure (the pseudonym remains).
    user_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    # An operator acting on the subject's behalf (CLI), if any.
    requested_by: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    subject_pseudonym: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, server_default="{}")
    created_at: Mapped[datetime] = created_at()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Queued exports (POST /api/user/data-export): a one-time download link.
    download_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    downloaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class GdprExportFile(
    Base,
    shared="queued export archives; the application role has no privilege on it",
    app_access=AppAccess.NONE,
):
    """A queued export's archive, in chunks, until it is downloaded or expires. Only the
    privileged role may touch it (the application role has no privilege on the table)."""

    __tablename__ = "gdpr_export_files"
    __table_args__ = (UniqueConstraint("request_id", "seq"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    request_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("gdpr_requests.id", ondelete="CASCADE"), nullable=False
    )
    seq: Mapped[int] = mapped_column(Integer, nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
