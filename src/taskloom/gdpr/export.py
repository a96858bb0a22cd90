"""The data export of GDPR Art. 15/20: every row about one person, from every table that
references them (gdpr/inventory.py), as one JSON document or a ZIP of one JSON file per table
with a README. Rows are streamed from a server-side cursor in one REPEATABLE READ snapshot, so
memory stays flat and the tables agree with each other whatever the row count."""

from __future__ import annotations

import io
import json
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Table, Text, case, cast, func, literal, literal_column, or_, select

from taskloom.db.engine import Database
from taskloom.gdpr.inventory import REDACTED, child_tables, is_secret, user_tables

SCHEMA_VERSION = 1
FLUSH_BYTES = 64 * 1024
FETCH_ROWS = 1_000

TABLE_NOTES = {
    "users": "Your account: email, display name, when you last signed in.",
    "memberships": "The organizations you belong to and your role in each.",
    "sessions": "Your sign-in sessions: when, from which IP address and browser.",
    "refresh_tokens": "The refresh tokens issued to your sessions (the tokens themselves are "
    "never stored, only hashes, which are not exported).",
    "api_keys": "API keys you created: name, visible prefix, role, expiry.",
    "audit_logs": "Audit events where you were the actor, or which concern you.",
    "workflows": "Workflows you created or last changed.",
    "workflow_executions": "Executions you started, with their input and output.",
    "execution_steps": "The steps of the executions you started.",
    "ai_usage": "AI model calls made on your behalf: model, tokens, cost.",
    "tool_connections": "Tool connections you created (credentials are never exported).",
    "webhook_endpoints": "Webhook endpoints you created (signing secrets are never exported).",
    "feature_flags": "Feature flags you created.",
    "feature_flag_overrides": "Feature-flag settings that target you or that you created.",
    "gdpr_requests": "Your data-protection requests and their outcome.",
}


def _as_json(table: Table, where: Any) -> Any:
    """SELECT of each matching row as JSON text, encoded by PostgreSQL (several times faster
    than building dicts in Python), with secret columns replaced by "[redacted]"."""
    columns = [
        case((column.is_(None), None), else_=literal(REDACTED)).label(column.name)
        if is_secret(column.name)
        else column
        for column in table.columns
    ]
    rows = select(*columns).where(where).subquery("t")
    return (
        select(cast(func.row_to_json(literal_column("t")), Text))
        .select_from(rows)
        .execution_options(yield_per=FETCH_ROWS)
    )


async def count_rows(database: Database, user_id: uuid.UUID) -> int:
    """How many rows an export of the person will hold (for a progress bar)."""
    total = 0
    async with database.system_engine.connect() as conn:
        for user_table in user_tables():
            table = user_table.table
            match = or_(*(table.c[column] == user_id for column in user_table.columns))
            total += (
                await conn.execute(select(func.count()).select_from(table).where(match))
            ).scalar_one()
            for child, column in child_tables(table.name):
                parents = select(table.c.id).where(match)
                query = select(func.count()).select_from(child).where(child.c[column].in_(parents))
                total += (await conn.execute(query)).scalar_one()
    return total


OnRow = Callable[[int], None]  # called with how many rows were just read


def ignore_row(count: int) -> None:
    return None


async def sections(
    database: Database, user_id: uuid.UUID, on_row: OnRow = ignore_row
) -> AsyncIterator[tuple[str, AsyncIterator[list[str]]]]:
    """(table name, its rows in batches of JSON texts) for every table, empty ones included;
    consume each section's rows before asking for the next. Runs on the privileged role: a
    person's rows span organizations, and RLS would show only the current one."""
    async with database.system_engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():

            async def rows(query: Any) -> AsyncIterator[list[str]]:
                result = await conn.stream(query)
                async for batch in result.scalars().partitions(FETCH_ROWS):
                    on_row(len(batch))
                    yield list(batch)

            for user_table in user_tables():
                table = user_table.table
                match = or_(*(table.c[column] == user_id for column in user_table.columns))
                yield table.name, rows(_as_json(table, match))
                for child, column in child_tables(table.name):
                    parents = select(table.c.id).where(match)
                    yield child.name, rows(_as_json(child, child.c[column].in_(parents)))


def _header(user_id: uuid.UUID, exported_at: datetime) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "exported_at": exported_at.isoformat(),
        "subject_user_id": str(user_id),
        "secrets": f"hashes, salts and encrypted secrets appear as {REDACTED!r}",
    }


async def json_document(
    database: Database, user_id: uuid.UUID, exported_at: datetime, on_row: OnRow = ignore_row
) -> AsyncIterator[bytes]:
    """`{"schema_version", "exported_at", ..., "tables": {name: [rows]}}`, in chunks."""
    header = json.dumps(_header(user_id, exported_at))[:-1]
    buffer = io.BytesIO()
    buffer.write(f'{header},"tables":{{'.encode())
    first_table = True
    async for name, rows in sections(database, user_id, on_row):
        buffer.write(("" if first_table else ",").encode() + json.dumps(name).encode() + b":[")
        first_table, first_row = False, True
        async for batch in rows:
            buffer.write((b"" if first_row else b",") + ",".join(batch).encode())
            first_row = False
            if buffer.tell() >= FLUSH_BYTES:
                yield buffer.getvalue()
                buffer = io.BytesIO()
        buffer.write(b"]")
    buffer.write(b"}}")
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
) -> AsyncIterator[bytes]:
    """`manifest.json`, `README.md` and `tables/<name>.json` (a JSON array each)."""
    sink = _Sink()
    counts: dict[str, int] = {}
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        async for name, rows in sections(database, user_id, on_row):
            counts[name] = 0
            with archive.open(f"tables/{name}.json", "w", force_zip64=True) as entry:
                entry.write(b"[")
                async for batch in rows:
                    entry.write((b"," if counts[name] else b"") + ",".join(batch).encode())
                    counts[name] += len(batch)
                    yield sink.take()
                entry.write(b"]")
            yield sink.take()
        manifest = {**_header(user_id, exported_at), "row_counts": counts}
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
        archive.writestr("README.md", readme(counts))
    yield sink.take()


def readme(counts: dict[str, int]) -> str:
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
    return "\n".join(lines)
