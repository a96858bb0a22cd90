"""Rolling `ai_usage` rows up into `ai_usage_daily` before the execution retention deletes them:
the per-call rows name a person and an execution, the daily sums only an organization, a day
(UTC), a provider and a model. Calls still `pending` (a reservation in flight) are never rolled
up. These run in the caller's privileged transaction: the purge works across organizations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# The calls of these executions, and the calls of no execution (its workflow was deleted) made
# before the cutoff.
_CHOSEN = (
    "outcome <> 'pending' and (execution_id = any(:executions) or id in ("
    "select id from ai_usage where execution_id is null and outcome <> 'pending' "
    "and created_at < :cutoff limit :orphans))"
)

# Deletes the chosen rows and adds what they said to the daily sums, in one statement.
_ROLL_UP = f"""
with gone as (
    delete from ai_usage where {_CHOSEN}
    returning org_id, created_at, provider, model, input_tokens, output_tokens, cost_usd
), sums as (
    insert into ai_usage_daily
        (id, org_id, day, provider, model, calls, input_tokens, output_tokens, cost_usd)
    select gen_random_uuid(), org_id, (created_at at time zone 'UTC')::date, provider, model,
           count(*), sum(input_tokens), sum(output_tokens), sum(cost_usd)
    from gone
    group by org_id, (created_at at time zone 'UTC')::date, provider, model
    on conflict (org_id, day, provider, model) do update set
        calls = ai_usage_daily.calls + excluded.calls,
        input_tokens = ai_usage_daily.input_tokens + excluded.input_tokens,
        output_tokens = ai_usage_daily.output_tokens + excluded.output_tokens,
        cost_usd = ai_usage_daily.cost_usd + excluded.cost_usd
    returning 1
)
select (select count(*) from gone), (select count(*) from sums)
"""  # noqa: S608 (constant SQL)

_PREVIEW = f"""
select count(*), count(distinct (org_id, (created_at at time zone 'UTC')::date, provider, model))
from ai_usage where {_CHOSEN}
"""  # noqa: S608 (constant SQL)


@dataclass(frozen=True)
class RollUp:
    calls: int  # ai_usage rows deleted (or that would be)
    daily_rows: int  # ai_usage_daily rows written or added to


async def roll_up(
    db: AsyncSession,
    *,
    execution_ids: list[uuid.UUID],
    cutoff: datetime,
    orphans: int | None,
    dry_run: bool,
) -> RollUp:
    """Sum the calls of `execution_ids`, and up to `orphans` calls of no execution made before
    `cutoff` (None: all of them), into the daily rows and delete them; `dry_run` only counts."""
    params = {"executions": execution_ids, "cutoff": cutoff, "orphans": orphans}
    calls, daily = (await db.execute(text(_PREVIEW if dry_run else _ROLL_UP), params)).one()
    return RollUp(calls=int(calls), daily_rows=int(daily))
