"""The data export of GDPR Art. 15/20: the person's own rows, from every table that references
them (gdpr/inventory.py), and a reference (id, type, created_at) to each organization resource
they wrote but may no longer read; as one JSON document or a ZIP of one JSON file per table
with a README. Rows are streamed from a server-side cursor in one REPEATABLE READ snapshot, so
memory stays flat and the tables agree with each other whatever the row count.

The snapshot holds a connection of the export pool (`Database.export_engine`) until the
document ends or its generator is closed: each document's first chunk is empty and comes once
that connection is taken, so a caller can tell "no connection free" apart from a slow start."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    Table,
    Text,
    case,
    cast,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from taskloom.db.engine import Database
from taskloom.gdpr.inventory import (
    REDACTED,
    WITHHELD,
    child_tables,
    copy_readable,
    is_secret,
    user_tables,
)

SCHEMA_VERSION = 2
FLUSH_BYTES = 64 * 1024
FETCH_ROWS = 1_000
REFERENCES = "references"

TABLE_NOTES = {
    "users": "Your account: email, display name, when you last signed in.",
    "memberships": "The organizations you belong to and your role in each (and memberships you "
    "added, while you are a member there).",
    "sessions": "Your sign-in sessions: when, from which IP address and browser.",
    "refresh_tokens": "The refresh tokens issued to your sessions (the tokens themselves are "
    "never stored, only hashes, which are not exported).",
    "api_keys": "API keys you created: name, visible prefix, role, expiry.",
    "audit_logs": "Audit events where you were the actor.",
    "workflows": "Workflows you created or last changed, in organizations you are still a "
    "member of.",
    "workflow_versions": "Versions of workflows you saved (created, changed or restored), with "
    "the definition and the triggers' and schedules' settings they kept, in organizations you "
    "are still a member of.",
    "workflow_executions": "Executions you started, with their input and output (the workflow "
    "definition they ran only while you may still read the workflow).",
    "execution_steps": "The steps of the executions you started.",
    "execution_approvals": "Approvals you decided (approve or reject, your comment), in "
    "organizations you are still a member of.",
    "execution_step_items": "The for-each items of those steps (one run per item).",
    "execution_agent_turns": "The model turns and tool calls of those executions' agent steps "
    "(what was sent, answered and called, tokens and cost).",
    "ai_usage": "AI model calls made on your behalf: model, tokens, cost.",
    "tool_connections": "Tool connections you created, in organizations where you are still an "
    "admin (credentials are never exported).",
    "org_secrets": "Organization secrets you created or last replaced, in organizations where "
    "you are still an admin: name, description, allowed hosts (values are never exported).",
    "webhook_endpoints": "Webhook endpoints you created, in organizations where you are still an "
    "admin (signing secrets are never exported).",
    "workflow_schedules": "Schedules you created, in organizations you are still a member of.",
    "workflow_triggers": "Webhook and event triggers you created, in organizations where you are "
    "still an admin (their secrets are never exported).",
    "feature_flags": "Feature flags you created, while you are an instance administrator.",
    "feature_flag_overrides": "Feature-flag settings that target you, or that you created in "
    "organizations where you are still an admin.",
    "gdpr_requests": "Your data-protection requests and their outcome.",
}
REFERENCES_NOTE = (
    "Organization resources you created or changed but can no longer read there (you left the "
    "organization, or your role no longer allows it): only their id, `type` (the table) and "
    "when they were created. Their content is the organization's, not yours."
)

OnRow = Callable[[int], None]  # called with how many rows were just read
Rows = AsyncIterator[list[str]]


def ignore_row(count: int) -> None:
    return None


def _as_json(table: Table, where: Any, user_id: uuid.UUID) -> Any:
    """SELECT of each matching row as JSON text, encoded by PostgreSQL (several times faster
    than building dicts in Python), with secret columns replaced by "[redacted]" and copies of
    organization resources the person may no longer read by "[withheld]"."""

    def exported(column: Any) -> Any:
        if is_secret(column.name):
            return case((column.is_(None), None), else_=literal(REDACTED)).label(column.name)
        readable = copy_readable(table, column.name, user_id)
        if readable is not None:
            withheld = func.to_jsonb(literal(WITHHELD, Text))
            return case((readable, column), else_=withheld).label(column.name)
        return column

    return _json_rows(select(*(exported(column) for column in table.columns)).where(where))


def _json_rows(query: Any) -> Any:
    rows = query.subquery("t")
    return (
        select(cast(func.row_to_json(literal_column("t")), Text))
        .select_from(rows)
        .execution_options(yield_per=FETCH_ROWS)
    )


def _references(user_id: uuid.UUID) -> Any:
    """(id, type, created_at) of every row about the person that is not theirs to read."""
    parts = [
        select(
            user_table.table.c.id.label("id"),
            literal(user_table.name, Text).label("type"),
            user_table.table.c.get("created_at", null().cast(DateTime(timezone=True))).label(
                "created_at"
            ),
        ).where(user_table.referenced(user_id))
        for user_table in user_tables()
        if user_table.has_authored
    ]
    return union_all(*parts)


def _queries(user_id: uuid.UUID) -> list[tuple[str, Any, Any]]:
    """(table name, its rows as JSON, how many) for every table, then the references."""

    def count(table: Any, where: Any) -> Any:
        return select(func.count()).select_from(table).where(where)

    found = []
    for user_table in user_tables():
        table, whole = user_table.table, user_table.whole(user_id)
        found.append((table.name, _as_json(table, whole, user_id), count(table, whole)))
        for child, column in child_tables(table.name):
            mine = child.c[column].in_(select(table.c.id).where(whole))
            found.append((child.name, _as_json(child, mine, user_id), count(child, mine)))
    references = _references(user_id).subquery("r")
    found.append((REFERENCES, _json_rows(select(references)), count(references, true())))
    return found


@asynccontextmanager
async def _snapshot(database: Database) -> AsyncIterator[AsyncConnection]:
    """A REPEATABLE READ transaction on a connection of the export pool. Runs on the privileged
    role: a person's rows span organizations, and RLS would show only the current one. Raises
    SQLAlchemy's TimeoutError when no export connection frees up in time."""
    async with database.export_engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            yield conn


async def count_rows(database: Database, user_id: uuid.UUID) -> int:
    """How many rows and references an export of the person will hold (for a progress bar)."""
    total = 0
    async with _snapshot(database) as conn:
        for _, _, count in _queries(user_id):
            total += (await conn.execute(count)).scalar_one()
    return total


async def _sections(
    conn: AsyncConnection, user_id: uuid.UUID, on_row: OnRow
) -> AsyncIterator[tuple[str, Rows]]:
    """(table name, its rows in batches of JSON texts) for every table, empty ones included,
    and last (REFERENCES, the references); consume each section before asking for the next."""

    async def rows(query: Any) -> Rows:
        result = await conn.stream(query)
        async for batch in result.scalars().partitions(FETCH_ROWS):
            on_row(len(batch))
            yield list(batch)

    for name, query, _ in _queries(user_id):
        yield name, rows(query)


def _header(user_id: uuid.UUID, exported_at: datetime) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "exported_at": exported_at.isoformat(),
        "subject_user_id": str(user_id),
        "secrets": f"hashes, salts and encrypted secrets appear as {REDACTED!r}",
        "withheld": f"copies of an organization's resources you can no longer read there "
        f"(the definition an execution ran) appear as {WITHHELD!r}",
    }


async def json_document(
    database: Database, user_id: uuid.UUID, exported_at: datetime, on_row: OnRow = ignore_row
) -> AsyncGenerator[bytes, None]:
    """`{"schema_version", "exported_at", ..., "tables": {name: [rows]}, "references": [...]}`,
    in chunks (the first one empty, once the snapshot is open)."""
    async with _snapshot(database) as conn:
        yield b""
        header = json.dumps(_header(user_id, exported_at))[:-1]
        buffer = io.BytesIO()
        buffer.write(f'{header},"tables":{{'.encode())
        first_table = True
        async for name, rows in _sections(conn, user_id, on_row):
            if name == REFERENCES:
                buffer.write(b'},"references":[')
            else:
                buffer.write((b"" if first_table else b",") + json.dumps(name).encode() + b":[")
            first_table, first_row = False, True
            async for batch in rows:
                buffer.write((b"" if first_row else b",") + ",".join(batch).encode())
                first_row = False
                if buffer.tell() >= FLUSH_BYTES:
                    yield buffer.getvalue()
                    buffer = io.BytesIO()
            buffer.write(b"]")
        buffer.write(b"}")
        yield buffer.getvalue()


class _Sink(io.RawIOBase):
    """A write-only stream zipfile writes into; we hand its bytes on as they come."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


async def zip_archive(
    database: Database, user_id: uuid.UUID, exported_at: datetime, on_row: OnRow = ignore_row
) -> AsyncGenerator[bytes, None]:
    """`manifest.json`, `README.md`, `tables/<name>.json` (a JSON array each) and
    `references.json`, in chunks (the first one empty, once the snapshot is open)."""
    async with _snapshot(database) as conn:
        yield b""
        sink = _Sink()
        counts: dict[str, int] = {}
        with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            async for name, rows in _sections(conn, user_id, on_row):
                counts[name] = 0
                path = f"{name}.json" if name == REFERENCES else f"tables/{name}.json"
                with archive.open(path, "w", force_zip64=True) as entry:
                    entry.write(b"[")
                    async for batch in rows:
                        entry.write((b"," if counts[name] else b"") + ",".join(batch).encode())
                        counts[name] += len(batch)
                        yield sink.take()
                    entry.write(b"]")
                yield sink.take()
            references = counts.pop(REFERENCES)
            manifest = {
                **_header(user_id, exported_at),
                "row_counts": counts,
                "reference_count": references,
            }
            archive.writestr("manifest.json", json.dumps(manifest, indent=2))
            archive.writestr("README.md", readme(counts, references))
        yield sink.take()


def readme(counts: dict[str, int], references: int) -> str:
    """What each file and field is, for the person reading their export."""
    from taskloom.db.base import Base

    lines = [
        "# Your Taskloom data",
        "",
        "One JSON file per table in `tables/`, each an array of rows about you. `manifest.json`",
        f"says when this was exported and how many rows each file holds. Values shown as "
        f"`{REDACTED}` are secrets (password and token hashes, encrypted credentials, salts):",
        "they are never exported. Times are ISO 8601 in UTC; ids are UUIDs.",
        "",
    ]
    for name, count in counts.items():
        table = Base.metadata.tables[name]
        lines += [f"## tables/{name}.json ({count} rows)", "", TABLE_NOTES.get(name, ""), ""]
        for column in table.columns:
            note = " (redacted)" if is_secret(column.name) else ""
            lines.append(f"- `{column.name}`: {column.type}{note}")
        lines.append("")
    lines += [f"## {REFERENCES}.json ({references} rows)", "", REFERENCES_NOTE, ""]
    return "\n".join(lines)
