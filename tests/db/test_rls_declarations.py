"""Each table declares its row-level-security scope on its model (db/rls.py): adding a table
means touching its model and a migration, and a model that forgets the declaration is refused
loudly, never quietly left without isolation or without its grants."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import Column, MetaData, Table
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped

from taskloom.db.base import Base, uuid_pk
from taskloom.db.migrate import _grants
from taskloom.db.rls import (
    INFO_KEY,
    UNMAPPED_TABLES,
    AppAccess,
    Scope,
    TablePolicy,
    UndeclaredTables,
    isolated_tables,
    shared_tables,
    table_policies,
    tables_with_access,
)
from taskloom.models import metadata


def test_a_model_without_a_declaration_is_refused_when_its_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"model Forgetful must declare .*rls=Scope"):

        class Forgetful(Base):
            __tablename__ = "forgetful_things"
            id: Mapped[uuid.UUID] = uuid_pk()

    assert "forgetful_things" not in Base.metadata.tables  # refused before it was mapped


@pytest.mark.parametrize(
    "declaration",
    [
        {"rls": Scope.ORG, "shared": "both at once"},
        {"shared": ""},
        {"app_access": AppAccess.READ_ONLY},
    ],
)
def test_a_model_must_declare_exactly_one_of_a_scope_or_why_it_is_shared(
    declaration: dict[str, object],
) -> None:
    with pytest.raises(TypeError, match="must declare"):

        class Confused(Base, **declaration):
            __tablename__ = "confused_things"
            id: Mapped[uuid.UUID] = uuid_pk()

    assert "confused_things" not in Base.metadata.tables


def test_a_class_without_a_table_of_its_own_declares_nothing() -> None:
    with pytest.raises(TypeError, match="no table of its own"):

        class Mixin(Base, rls=Scope.ORG):
            __abstract__ = True


def test_a_table_without_a_declaration_is_listed_by_name() -> None:
    scratch = MetaData()
    Table("declared", scratch, Column("id", UUID), info={INFO_KEY: TablePolicy(scope=Scope.ORG)})
    Table("plain_table_one", scratch, Column("id", UUID))
    Table("plain_table_two", scratch, Column("id", UUID))
    with pytest.raises(UndeclaredTables, match="plain_table_one, plain_table_two"):
        table_policies(scratch)
    with pytest.raises(UndeclaredTables):
        isolated_tables(scratch)


def test_every_model_declares_and_the_lists_are_derived_from_the_models() -> None:
    policies = table_policies(metadata)  # raises if any model declares nothing
    assert set(policies) == set(metadata.tables) | set(UNMAPPED_TABLES)
    assert set(isolated_tables(metadata)).isdisjoint(shared_tables(metadata))
    assert set(isolated_tables(metadata)) | set(shared_tables(metadata)) == set(policies)
    assert isolated_tables(metadata)["workflows"] is Scope.ORG
    assert isolated_tables(metadata)["sessions"] is Scope.USER
    assert "alembic_version" in shared_tables(metadata)  # no model: declared in db/rls.py


def test_the_application_roles_grants_follow_the_declared_access() -> None:
    grants = _grants(role="app", database="db")
    assert tables_with_access(metadata, AppAccess.NONE) == [
        "gdpr_export_files",
        "sso_group_mappings",
        "sso_providers",
    ]
    assert tables_with_access(metadata, AppAccess.APPEND_ONLY) == [
        "audit_logs",
        "workflow_versions",
    ]
    assert tables_with_access(metadata, AppAccess.READ_ONLY) == [
        "alembic_version",
        "feature_flags",
        "schema_revisions",
    ]
    for table in ("gdpr_export_files", "sso_group_mappings", "sso_providers"):
        assert f'REVOKE ALL ON "{table}" FROM "app"' in grants
    assert 'REVOKE UPDATE, DELETE ON "audit_logs" FROM "app"' in grants
    assert 'REVOKE UPDATE, DELETE ON "workflow_versions" FROM "app"' in grants
    for table in ("alembic_version", "feature_flags", "schema_revisions"):
        assert f'REVOKE INSERT, UPDATE, DELETE ON "{table}" FROM "app"' in grants
