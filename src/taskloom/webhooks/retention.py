"""The webhook deliveries of executions the retention purges: every attempt of their events
(the first attempt's payload names the execution; later attempts share its event id). Deliveries
still waiting to be sent (`pending`, `queued`) stay: they carry their whole payload."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# The expression and predicate of ix_webhook_deliveries_execution_id (migration 0012).
_EVENTS = """
select event_id from webhook_deliveries
where payload is not null and (payload -> 'data' ->> 'execution_id') = any(:executions)
"""
_WHERE = f"event_id in ({_EVENTS}) and status not in ('pending', 'queued')"


async def purge_deliveries(
    db: AsyncSession, *, execution_ids: list[uuid.UUID], dry_run: bool
) -> int:
    """Delete (or with `dry_run` count) the sent deliveries of these executions' events.
    Privileged transaction of the caller: the purge works across organizations."""
    params = {"executions": [str(i) for i in execution_ids]}
    if dry_run:
        sql = f"select count(*) from webhook_deliveries where {_WHERE}"  # noqa: S608 (constant)
        return int((await db.execute(text(sql), params)).scalar_one())
    deleted = await db.execute(text(f"delete from webhook_deliveries where {_WHERE}"), params)  # noqa: S608 (constant)
    return int(getattr(deleted, "rowcount", 0) or 0)
