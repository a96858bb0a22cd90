"""Declarative base with a naming convention, so migrations name constraints predictably, and
with each table's row-level-security declaration (db/rls.py)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, Table, func
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from taskloom.db.rls import INFO_KEY, AppAccess, Scope, TablePolicy

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """A model with a table of its own says how its rows are isolated between tenants:
    `class Workflow(Base, rls=Scope.ORG)`, or `shared="why it has no row-level security"`, and
    `app_access=AppAccess.…` when the application role may do less than read and write. A model
    that says neither is refused when its class is defined."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)

    def __init_subclass__(
        cls,
        *,
        rls: Scope | None = None,
        shared: str | None = None,
        app_access: AppAccess = AppAccess.READ_WRITE,
        **kw: Any,
    ) -> None:
        own_table = "__tablename__" in cls.__dict__ or "__table__" in cls.__dict__
        declared = rls is not None or shared is not None or app_access is not AppAccess.READ_WRITE
        if not own_table or cls.__dict__.get("__abstract__", False):
            if declared:
                raise TypeError(f"{cls.__name__} has no table of its own to declare RLS for")
            super().__init_subclass__(**kw)
            return
        try:
            policy = TablePolicy(scope=rls, shared=shared, access=app_access)
        except ValueError:
            raise TypeError(
                f"model {cls.__name__} must declare either its row-level-security scope, "
                f"`class {cls.__name__}(Base, rls=Scope.ORG|USER|SPECIAL)`, or why its table has "
                f'none, `shared="…"` (db/rls.py)'
            ) from None
        super().__init_subclass__(**kw)
        assert isinstance(cls.__table__, Table)
        cls.__table__.info[INFO_KEY] = policy


def uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)


def created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


def updated_at() -> Mapped[datetime]:
    return mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now(), onupdate=func.now()
    )
