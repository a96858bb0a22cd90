"""Which tables are tenant-isolated, and how. Each model declares it on its class
(`class Workflow(Base, rls=Scope.ORG)`, or `shared="why it has no row-level security"`, see
`Base`), the few tables without a model are declared in UNMAPPED_TABLES below, and the lists here
are derived from a metadata. The migrations create the policies; `taskloom migrate` derives the
application role's grants from these declarations, and tests and `taskloom doctor` check that
every table is covered and FORCEd.

The lists are read from the metadata they are given, so pass one that knows every table
(`taskloom.models.metadata`, or `Base.metadata` in a process whose entry point imported it)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import MetaData


class Scope(StrEnum):
    ORG = "org"  # rows belong to one organization: org_id = app.org_id
    USER = "user"  # rows belong to one user: user_id = app.user_id
    SPECIAL = "special"  # org/user mix, see the migration that defines the policies


class AppAccess(StrEnum):
    """What the application role may do with a table (`taskloom migrate` grants it)."""

    READ_WRITE = "read_write"  # select, insert, update, delete (row-level security permitting)
    APPEND_ONLY = "append_only"  # select and insert, never update or delete
    READ_ONLY = "read_only"  # select: writes go through the privileged role, after a check
    NONE = "none"  # system only: the privileged role alone may touch it


@dataclass(frozen=True)
class TablePolicy:
    """A table's declaration: its row-level-security scope, or why it is shared (no RLS)."""

    scope: Scope | None = None
    shared: str | None = None
    access: AppAccess = AppAccess.READ_WRITE

    def __post_init__(self) -> None:
        if (self.scope is None) == (self.shared is None) or self.shared == "":
            raise ValueError("a table declares a row-level-security scope or why it is shared")


INFO_KEY = "taskloom_rls"  # where a model's TablePolicy is kept, in its Table.info

# Tables no model maps, declared here instead.
UNMAPPED_TABLES: dict[str, TablePolicy] = {
    "alembic_version": TablePolicy(
        shared="migration bookkeeping; the application role may only read it",
        access=AppAccess.READ_ONLY,
    ),
}


class UndeclaredTables(Exception):
    """Tables whose model declares neither a row-level-security scope nor why it is shared."""


def table_policies(metadata: MetaData) -> dict[str, TablePolicy]:
    """Every table's declaration; raises UndeclaredTables naming the tables that make none."""
    policies = dict(UNMAPPED_TABLES)
    undeclared = []
    for name, table in metadata.tables.items():
        policy = table.info.get(INFO_KEY)
        if isinstance(policy, TablePolicy):
            policies[name] = policy
        else:
            undeclared.append(name)
    if undeclared:
        raise UndeclaredTables(
            f"tables without a row-level-security declaration: {', '.join(sorted(undeclared))}; "
            'declare `rls=Scope.…` or `shared="why"` on the model (db/rls.py)'
        )
    return policies


def isolated_tables(metadata: MetaData) -> dict[str, Scope]:
    """Tables with row-level security ENABLEd and FORCEd, and whose rows each policy admits."""
    return {
        name: policy.scope
        for name, policy in table_policies(metadata).items()
        if policy.scope is not None
    }


def shared_tables(metadata: MetaData) -> dict[str, str]:
    """Tables deliberately without row-level security, and why."""
    return {
        name: policy.shared
        for name, policy in table_policies(metadata).items()
        if policy.shared is not None
    }


def tables_with_access(metadata: MetaData, access: AppAccess) -> list[str]:
    """The tables on which the application role has `access`, by name."""
    return sorted(
        name for name, policy in table_policies(metadata).items() if policy.access is access
    )
