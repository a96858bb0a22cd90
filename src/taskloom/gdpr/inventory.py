"""Where a person's data lives, read from the data model itself: every table with a column that
references `users` (found through the foreign keys, so a table added later is covered without
anyone remembering to list it), plus the child rows that belong to those rows."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import Table

import taskloom.db.registry  # noqa: F401  (every model is mapped)
from taskloom.db.base import Base

# Rows that do not reference the user themselves but belong to rows that do.
CHILDREN: dict[str, list[tuple[str, str]]] = {
    # table: [(child table, child column referencing the parent's id)]
    "workflow_executions": [("execution_steps", "execution_id")],
}
# Columns never exported (hashes of secrets, encrypted secrets, salts): present as "[redacted]".
_SECRET = re.compile(r"hash|secret|encrypted|password|salt", re.IGNORECASE)
REDACTED = "[redacted]"


@dataclass(frozen=True)
class UserTable:
    table: Table
    columns: tuple[str, ...]  # columns holding the user's id ("id" for users itself)

    @property
    def name(self) -> str:
        return self.table.name


def user_tables() -> list[UserTable]:
    """Every table with a person's rows, in dependency order (users first)."""
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


def child_tables(parent: str) -> list[tuple[Table, str]]:
    tables = Base.metadata.tables
    return [(tables[name], column) for name, column in CHILDREN.get(parent, [])]


def is_secret(column: str) -> bool:
    return bool(_SECRET.search(column))
