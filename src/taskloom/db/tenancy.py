"""Per-transaction tenant context. Row-level security policies read `app.org_id` and
`app.user_id`; both are set with `set_config(..., true)` so they vanish at commit and can never
leak to the next user of a pooled connection. No tenant set means no rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from taskloom.db.driver import session_connection
from taskloom.db.engine import Database
from taskloom.observability.request_id import current_request_id

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


@asynccontextmanager
async def tenant_transaction(
    database: Database, *, org_id: uuid.UUID | None, user_id: uuid.UUID | None
) -> AsyncIterator[AsyncSession]:
    """A transaction on the application role, scoped to the tenant; commits on success."""
    async with database.app_sessions() as session, session.begin():
        await set_tenant(session, org_id=org_id, user_id=user_id)
        yield session


@asynccontextmanager
async def system_transaction(database: Database) -> AsyncIterator[AsyncSession]:
    """A transaction on the privileged role. Callers name why they need it in their docstring."""
    async with database.system_sessions() as session, session.begin():
        yield session
