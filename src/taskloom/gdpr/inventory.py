"""Where a person's data lives, read from the data model itself: every table with a column that
references `users` (found through the foreign keys, so a table added later is covered without
anyone remembering to list it), plus the child rows that belong to those rows.

Each such column says what a row is to the person. A *personal* column makes the row theirs:
their account, memberships, sessions, keys, the audit events they caused, the executions they
started. An *authored* column only records that they wrote an organization's resource (a
workflow, a connection, a webhook): the row is the organization's, readable by them only while
they are a member with the role that may read it there. The export holds personal rows whole,
authored rows whole while readable, and otherwise only a reference: id, type, created_at."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, Table, and_, exists, false, func, not_, or_, select, true

from taskloom.db.base import Base
from taskloom.orgs.models import Role

# Rows that do not reference the user themselves but belong to rows that do.
CHILDREN: dict[str, list[tuple[str, str]]] = {
    # table: [(child table, child column referencing the parent's id)]
    "workflow_executions": [
        ("execution_steps", "execution_id"),
        ("execution_step_items", "execution_id"),
        ("execution_agent_turns", "execution_id"),
    ],
}
# Columns never exported (hashes of secrets, encrypted secrets, salts): present as "[redacted]".
_SECRET = re.compile(r"hash|secret|encrypted|password|salt", re.IGNORECASE)
REDACTED = "[redacted]"

# (table, column): the row is the person's own, exported whole wherever it lives.
PERSONAL: frozenset[tuple[str, str]] = frozenset(
    {
        ("users", "id"),
        ("memberships", "user_id"),
        ("sessions", "user_id"),
        ("refresh_tokens", "user_id"),
        ("api_keys", "user_id"),
        ("audit_logs", "actor_user_id"),
        ("workflow_executions", "triggered_by"),
        ("ai_usage", "user_id"),  # calls made by the executions they started
        ("feature_flag_overrides", "user_id"),  # settings that target them
        ("gdpr_requests", "user_id"),
        ("sso_identities", "user_id"),  # who they are at an identity provider
        ("sso_sessions", "user_id"),  # the provider side of their sessions (tokens withheld)
    }
)
# Who may read a row in the person's place: a member of the row's organization with at least
# this role (an instance administrator for a row of no organization), an instance
# administrator ("superuser", for instance-wide rows), or nobody.
Reader = Role | Literal["superuser"] | None
# (table, column): the person wrote the row, which is the organization's (or the instance's).
AUTHORED: dict[tuple[str, str], Reader] = {
    ("memberships", "invited_by"): Role.VIEWER,  # other people's memberships
    ("workflows", "created_by"): Role.VIEWER,
    ("workflows", "updated_by"): Role.VIEWER,
    ("workflow_versions", "created_by"): Role.VIEWER,  # the versions they saved
    ("execution_approvals", "decided_by"): Role.VIEWER,  # their decisions and comments
    ("tool_connections", "created_by"): Role.ADMIN,
    ("org_secrets", "created_by"): Role.ADMIN,
    ("org_secrets", "updated_by"): Role.ADMIN,
    ("webhook_endpoints", "created_by"): Role.ADMIN,
    ("workflow_schedules", "created_by"): Role.VIEWER,
    ("workflow_triggers", "created_by"): Role.ADMIN,
    ("invitations", "invited_by"): Role.ADMIN,  # other people's addresses
    ("feature_flags", "created_by"): "superuser",
    ("feature_flag_overrides", "created_by"): Role.ADMIN,
    ("gdpr_requests", "requested_by"): None,  # an operator acting for someone else
    ("organizations", "sso_break_glass_user_id"): Role.VIEWER,  # named by an owner
}
# (table, column): a column of a personal row that copies an organization's resource (the
# definition an execution ran): "[withheld]" unless the person may still read it there.
COPIES: dict[tuple[str, str], Reader] = {("workflow_executions", "definition"): Role.VIEWER}
WITHHELD = "[withheld]"
# A column in neither list (a table added later, before someone classifies it) is treated as
# authored and readable by nobody: the export shows a reference, never someone else's data.
# tests/gdpr/test_export_scope.py fails until every column is classified.


@dataclass(frozen=True)
class UserTable:
    table: Table
    columns: tuple[str, ...]  # columns holding the user's id ("id" for users itself)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def has_authored(self) -> bool:
        """Whether some rows may be the organization's rather than the person's."""
        return any((self.name, column) not in PERSONAL for column in self.columns)

    def about(self, user_id: uuid.UUID) -> ColumnElement[bool]:
        """Rows that hold the person's id in any of the columns."""
        return or_(*(self.table.c[column] == user_id for column in self.columns))

    def whole(self, user_id: uuid.UUID) -> ColumnElement[bool]:
        """Rows exported whole: the person's own, or ones they wrote and may still read."""
        return or_(
            *(
                self.table.c[column] == user_id
                if (self.name, column) in PERSONAL
                else and_(
                    self.table.c[column] == user_id,
                    readable(self.table, AUTHORED.get((self.name, column)), user_id),
                )
                for column in self.columns
            )
        )

    def referenced(self, user_id: uuid.UUID) -> ColumnElement[bool]:
        """Rows exported as a reference only: about the person, but not theirs to read."""
        return and_(self.about(user_id), not_(func.coalesce(self.whole(user_id), false())))


def readable(table: Table, reader: Reader, user_id: uuid.UUID) -> ColumnElement[bool]:
    """Whether the person may read a row of `table` that needs `reader`, as of now."""
    # Aliased, so that a subquery on the row's own table (memberships) is not correlated.
    users = Base.metadata.tables["users"].alias("reader_account")
    instance_admin = exists().where(users.c.id == user_id, users.c.is_superuser.is_(true()))
    if reader is None:
        return false()
    if reader == "superuser":
        return instance_admin
    # The row's organization: its org_id, or its own id for an organization itself.
    org = table.c.id if table.name == "organizations" else table.c.get("org_id")
    if org is None:
        return false()
    memberships = Base.metadata.tables["memberships"].alias("reader_membership")
    roles = [role.value for role in Role if role.at_least(reader)]
    member = org.in_(
        select(memberships.c.org_id).where(
            memberships.c.user_id == user_id, memberships.c.role.in_(roles)
        )
    )
    # A row of no organization (an instance-wide flag override) is the instance administrators'.
    return or_(member, and_(org.is_(None), instance_admin))


def copy_readable(table: Table, column: str, user_id: uuid.UUID) -> ColumnElement[bool] | None:
    """None when the column is the person's own data; else whether they may read it now."""
    if (table.name, column) not in COPIES:
        return None
    return readable(table, COPIES[(table.name, column)], user_id)


def user_tables() -> list[UserTable]:
    """Every table with a person's rows, in dependency order (users first). Read when called,
    from a `Base.metadata` that knows every table because each process's entry point imports
    `taskloom.models` (runtime.py, cli.py); this module cannot import it (an upward import)."""
    found = []
    for table in Base.metadata.sorted_tables:
        if table.name == "users":
            found.append(UserTable(table, ("id",)))
            continue
        columns = tuple(
            column.name
            for column in table.columns
            if any(fk.column.table.name == "users" for fk in column.foreign_keys)
        )
        if columns:
            found.append(UserTable(table, columns))
    return found


def unclassified() -> list[str]:
    """`table.column` references to users that are neither PERSONAL nor AUTHORED."""
    return [
        f"{user_table.name}.{column}"
        for user_table in user_tables()
        for column in user_table.columns
        if (user_table.name, column) not in {*PERSONAL, *AUTHORED}
    ]


def child_tables(parent: str) -> list[tuple[Table, str]]:
    tables = Base.metadata.tables
    return [(tables[name], column) for name, column in CHILDREN.get(parent, [])]


def is_secret(column: str) -> bool:
    return bool(_SECRET.search(column))
