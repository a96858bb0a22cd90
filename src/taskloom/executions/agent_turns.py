"""The rows of an `agent` step's sub-steps (`execution_agent_turns`, ADR 0015): each model turn
and each tool call is one row, written when it starts and again when it ends, so what finished
is durable before the loop goes on. A row's end may ride in the transaction that starts the
next row (`ended=`: a model turn's end with its first tool call's start, a tool call's end with
the next call's or the next turn's start), committed before that next call is made; an end
with nothing after it (a final answer, an error, a stop) is written on its own.

Every input, output and error written here passes through `scrub`, the execution's
`Run.scrubbed` (the one boundary where results are persisted, docs/SECRETS.md), and tool
arguments through `state.redact` as a step's arguments are.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.db.engine import Database
from taskloom.db.tenancy import tenant_transaction
from taskloom.executions.models import AgentRecordStatus, AgentTurn
from taskloom.executions.state import redact

Scrub = Callable[[Any], Any]


@dataclass(frozen=True)
class Ended:
    """A row's end: the statement and its values, run on its own (`write_ended`) or in the
    transaction of the next row's start (`ended=`)."""

    statement: Any
    params: dict[str, Any]


@dataclass(frozen=True)
class Place:
    """Whose rows: one agent step (or one for-each item of it) of one execution."""

    org_id: uuid.UUID
    execution_id: uuid.UUID
    step_id: str
    item_index: int | None
    scrub: Scrub

    def where(self) -> list[Any]:
        index = AgentTurn.item_index
        return [
            AgentTurn.execution_id == self.execution_id,
            AgentTurn.step_id == self.step_id,
            index.is_(None) if self.item_index is None else index == self.item_index,
        ]


async def load(database: Database, place: Place) -> list[AgentTurn]:
    """The step's rows so far, in conversation order."""
    async with tenant_transaction(database, org_id=place.org_id, user_id=None) as db:
        rows = await db.scalars(
            select(AgentTurn).where(*place.where()).order_by(AgentTurn.turn, AgentTurn.call_index)
        )
        return list(rows)


_KEY = ("id", "org_id", "execution_id", "step_id", "item_index", "turn", "call_index")


def _bound(column: str) -> Any:
    """A parameter for `column`, of its type (JSON serialized as the column's own)."""
    return bindparam(column, type_=AgentTurn.__table__.c[column].type)


@functools.cache
def _upsert_statement(columns: tuple[str, ...]) -> Any:
    """Insert a row, or (a run again) mark it running once more; returns its attempts. Built
    once per set of columns: constructing it per call cost more CPU than running it."""
    statement = insert(AgentTurn).values(
        {**{c: _bound(c) for c in (*_KEY, "status", "started_at", *columns)}, "attempts": 1}
    )
    return statement.on_conflict_do_update(
        index_elements=[
            AgentTurn.execution_id,
            AgentTurn.step_id,
            # Literal, as in the index: a bound -1 stops matching it once PostgreSQL
            # plans the prepared statement generically.
            text("coalesce(item_index, -1)"),
            AgentTurn.turn,
            AgentTurn.call_index,
        ],
        set_={
            "status": statement.excluded.status,
            "attempts": AgentTurn.attempts + 1,
            "started_at": statement.excluded.started_at,
            "finished_at": None,
            "error": None,
            **{c: statement.excluded[c] for c in columns},
        },
    ).returning(AgentTurn.attempts)


async def _upsert(db: AsyncSession, place: Place, turn: int, call_index: int, **values: Any) -> int:
    """Insert the row, or (a run again) mark it running once more; returns its attempts."""
    statement = _upsert_statement(tuple(sorted(values)))
    params = {
        "id": uuid.uuid4(),
        "org_id": place.org_id,
        "execution_id": place.execution_id,
        "step_id": place.step_id,
        "item_index": place.item_index,
        "turn": turn,
        "call_index": call_index,
        "status": AgentRecordStatus.RUNNING,
        "started_at": datetime.now(UTC),
        **values,
    }
    attempts: int = (await db.execute(statement, params)).scalar_one()
    return attempts


async def model_started(
    database: Database, place: Place, *, turn: int, prompt: Any, ended: Ended | None = None
) -> None:
    """A model turn starts; `prompt` is the user text sent before it (None: only results).
    `ended`: the previous row's end (`tool_ended`), committed with this start."""
    async with tenant_transaction(database, org_id=place.org_id, user_id=None) as db:
        if ended is not None:
            await db.execute(ended.statement, ended.params)
        await _upsert(db, place, turn, 0, kind="model", input=place.scrub(prompt))


def model_ended(
    place: Place,
    *,
    turn: int,
    output: dict[str, Any] | None,
    error: dict[str, Any] | None = None,
    model: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: Decimal = Decimal(0),
    duration_ms: int | None = None,
) -> Ended:
    """The statement that ends a model turn's row (for `write_ended` or a start's `ended`)."""
    return _ended(
        place,
        turn,
        0,
        output=place.scrub(output),
        error=place.scrub(error),
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        duration_ms=duration_ms,
    )


async def tool_started(
    database: Database,
    place: Place,
    *,
    turn: int,
    call_index: int,
    tool_call_id: str,
    tool_name: str,
    connection: str | None,
    tool: str | None,
    idempotency_key: str,
    arguments: dict[str, Any],
    ended: Ended | None = None,
) -> int:
    """A tool call starts; returns its attempts (2: it had started before, in a job that died).
    `ended`: the previous row's end (`model_ended`, `tool_ended`), committed with this start."""
    async with tenant_transaction(database, org_id=place.org_id, user_id=None) as db:
        if ended is not None:
            await db.execute(ended.statement, ended.params)
        return await _upsert(
            db,
            place,
            turn,
            call_index,
            kind="tool",
            tool_call_id=tool_call_id[:128],
            tool_name=tool_name[:64],
            connection=connection,
            tool=tool,
            idempotency_key=idempotency_key[:400],
            input=place.scrub(redact(arguments)),
        )


def tool_ended(
    place: Place,
    *,
    turn: int,
    call_index: int,
    output: Any = None,
    error: dict[str, Any] | None = None,
    duration_ms: int | None = None,
) -> Ended:
    """The statement that ends a tool call's row (for `write_ended` or a start's `ended`)."""
    return _ended(
        place,
        turn,
        call_index,
        output=place.scrub(output),
        error=place.scrub(error),
        duration_ms=duration_ms,
    )


async def write_ended(database: Database, place: Place, ended: Ended) -> None:
    """Commit a row's end on its own (nothing starts after it)."""
    async with tenant_transaction(database, org_id=place.org_id, user_id=None) as db:
        await db.execute(ended.statement, ended.params)


@functools.cache
def _end_statement(columns: tuple[str, ...], *, in_item: bool) -> Any:
    """Mark one row finished (built once per set of columns, as `_upsert_statement`)."""
    index = AgentTurn.item_index
    return (
        update(AgentTurn)
        .where(
            AgentTurn.execution_id == bindparam("where_execution"),
            AgentTurn.step_id == bindparam("where_step"),
            index == bindparam("where_item") if in_item else index.is_(None),
            AgentTurn.turn == bindparam("where_turn"),
            AgentTurn.call_index == bindparam("where_call"),
        )
        .values({c: _bound(c) for c in ("status", "finished_at", *columns)})
    )


def _ended(place: Place, turn: int, call_index: int, **values: Any) -> Ended:
    status = AgentRecordStatus.FAILED if values.get("error") else AgentRecordStatus.SUCCEEDED
    statement = _end_statement(tuple(sorted(values)), in_item=place.item_index is not None)
    params = {
        "where_execution": place.execution_id,
        "where_step": place.step_id,
        "where_turn": turn,
        "where_call": call_index,
        "status": status,
        "finished_at": datetime.now(UTC),
        **values,
    }
    if place.item_index is not None:
        params["where_item"] = place.item_index
    return Ended(statement, params)


async def step_records(
    db: AsyncSession, *, execution_id: uuid.UUID, step_id: str
) -> list[AgentTurn]:
    """An agent step's rows for the API and the execution page (in the caller's tenant
    transaction, which already found the execution in its organization)."""
    rows = await db.scalars(
        select(AgentTurn)
        .where(AgentTurn.execution_id == execution_id, AgentTurn.step_id == step_id)
        .order_by(func.coalesce(AgentTurn.item_index, -1), AgentTurn.turn, AgentTurn.call_index)
    )
    return list(rows)


def as_json(row: AgentTurn) -> dict[str, Any]:
    """A row as the API shows it."""
    body: dict[str, Any] = {
        "item_index": row.item_index,
        "turn": row.turn,
        "kind": row.kind,
        "status": row.status,
        "attempts": row.attempts,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "duration_ms": row.duration_ms,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
    }
    if row.kind == "model":
        body.update(
            model=row.model,
            input_tokens=row.input_tokens,
            output_tokens=row.output_tokens,
            cost_usd=str(row.cost_usd),
        )
    else:
        body.update(
            call_index=row.call_index,
            tool_call_id=row.tool_call_id,
            tool_name=row.tool_name,
            connection=row.connection,
            tool=row.tool,
            idempotency_key=row.idempotency_key,
        )
    return body
