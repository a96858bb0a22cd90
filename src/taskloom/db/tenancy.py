"""Per-transaction tenant context. Row-level security policies read `app.org_id` and
`app.user_id`; both are set with `set_config(..., true)` so they vanish at commit and can never
leak to the next user of a pooled connection. No tenant set means no rows."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from taskloom.db.driver import Statements, app_connection, session_connection
from taskloom.db.engine import Database
from taskloom.observability.request_id import current_request_id, is_valid_request_id

_SET_TENANT = (
    "select set_config('app.org_id', $1, true), set_config('app.user_id', $2, true), "
    "set_config('app.request_id', $3, true)"
)


async def set_tenant(
    session: AsyncSession | AsyncConnection, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> None:
    """Scope the current transaction to one organization and one user (sent on the session's
    asyncpg connection itself: once per request, where SQLAlchemy's own cost is not worth it)."""
    statements = await session_connection(session)
    await statements.execute(
        _SET_TENANT,
        str(org_id) if org_id else "",
        str(user_id) if user_id else "",
        # Read by the webhook outbox triggers: deliveries carry the causing request's id.
        current_request_id() or "",
    )


def tenant_arguments(
    org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> tuple[uuid.UUID | None, uuid.UUID | None, str]:
    """The first three arguments of the read functions that set the tenant themselves
    (`taskloom_workflows`, `taskloom_recent_executions`: migration 0024): the organization, the
    user, and the request id. Called in autocommit (db/driver.app_connection), each is a read
    in one round trip; a plain statement sent there runs with no tenant and finds no row."""
    return org_id, user_id, current_request_id() or ""


@asynccontextmanager
async def tenant_transaction(
    database: Database, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> AsyncIterator[AsyncSession]:
    """A transaction on the application role, scoped to the tenant; commits on success."""
    async with database.app_sessions() as session, session.begin():
        await set_tenant(session, org_id=org_id, user_id=user_id)
        yield session


@asynccontextmanager
async def tenant_reads(
    database: Database, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> AsyncIterator[Statements]:
    """A read-only transaction on the application role, scoped to the tenant, on the asyncpg
    connection itself (no SQLAlchemy session): for the API's hot reads, the list endpoints.
    BEGIN and the tenant go in one round trip, then the caller's statements, then COMMIT;
    anything that writes fails (READ ONLY). SQLAlchemy does not know of this transaction, so
    it is always ended here: rolled back after an error, and a connection whose transaction
    could not be ended (a cancellation, a failed ROLLBACK or COMMIT) is closed, never pooled
    with the tenant set."""
    async with app_connection(database) as statements:
        try:
            await statements.execute(_begin_reads(org_id, user_id))
            yield statements
        except BaseException as error:
            await _abandon_reads(statements, cancelled=not isinstance(error, Exception))
            raise
        try:
            await statements.execute("commit")
        except BaseException:
            await _abandon_reads(statements, cancelled=True)
            raise


def _begin_reads(org_id: uuid.UUID | None, user_id: uuid.UUID | None) -> str:
    """BEGIN and `_SET_TENANT` as one simple query (several statements, so no parameters):
    the values are written as literals, which is safe only for what is checked here: UUIDs
    (parsed again, whatever the caller passed) and a request id of the alphabet
    observability/request_id accepts (no quote, no backslash)."""
    request_id = current_request_id() or ""
    if not is_valid_request_id(request_id):
        request_id = ""
    org = str(uuid.UUID(str(org_id))) if org_id else ""
    user = str(uuid.UUID(str(user_id))) if user_id else ""
    return (
        "begin read only; "
        f"select set_config('app.org_id', '{org}', true), "
        f"set_config('app.user_id', '{user}', true), "
        f"set_config('app.request_id', '{request_id}', true)"
    )


async def _abandon_reads(statements: Statements, *, cancelled: bool) -> None:
    """End the read transaction after a failure, never raising over the failure: ROLLBACK
    when the connection can still answer, else (cancelled: it may be mid-statement) close it."""
    connection = statements.connection
    if connection.is_closed():
        return  # app_connection discards it
    if not cancelled and connection.is_in_transaction():
        with contextlib.suppress(Exception):  # then closed below instead
            await statements.execute("rollback")
    if cancelled or connection.is_in_transaction():
        await statements.invalidate()


@asynccontextmanager
async def system_transaction(database: Database) -> AsyncIterator[AsyncSession]:
    """A transaction on the privileged role. Callers name why they need it in their docstring."""
    async with database.system_sessions() as session, session.begin():
        yield session
