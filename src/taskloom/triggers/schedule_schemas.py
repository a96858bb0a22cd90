"""Bodies of /api/workflows/{id}/schedules and /api/schedules (docs/TRIGGERS.md, Schedules)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from taskloom.auth.schemas import StrictModel
from taskloom.triggers.models import CatchUp, Overlap

CRON_MAX = 200
TIMEZONE_MAX = 64

_CRON = (
    "Five fields (minute hour day-of-month month day-of-week), or six with the SECONDS first "
    "(`*/10 * * * * *`: every ten seconds); @hourly, @daily and the like"
)
_TIMEZONE = "An IANA zone name (Europe/Berlin); ticks follow its daylight-saving changes"
_INPUT = (
    "The execution's input; strings may be templates reading `schedule.tick` (the tick's time, "
    "RFC 3339 UTC) and `schedule.id`"
)
_OVERLAP = (
    "While the previous execution of this schedule still runs, a tick is skipped (skip), "
    "starts anyway (allow), or waits for it to end (queue, at most 10 waiting)"
)
_CATCH_UP = (
    "Ticks missed while no worker ran (later than SCHEDULE_MISFIRE_SECONDS): skipped (none), "
    "the newest one runs (one), or up to 100 run (all)"
)


class ScheduleCreate(StrictModel):
    cron: str = Field(min_length=1, max_length=CRON_MAX, description=_CRON)
    timezone: str = Field(
        default="UTC", min_length=1, max_length=TIMEZONE_MAX, description=_TIMEZONE
    )
    input: dict[str, Any] = Field(default_factory=dict, description=_INPUT)
    enabled: bool = Field(default=True, description="false: paused (no ticks, none caught up)")
    overlap: Overlap = Field(default=Overlap.SKIP, description=_OVERLAP)
    catch_up: CatchUp = Field(default=CatchUp.NONE, description=_CATCH_UP)


class ScheduleUpdate(StrictModel):
    """Any subset of the fields; absent ones are unchanged. `enabled` pauses and resumes."""

    cron: str | None = Field(default=None, min_length=1, max_length=CRON_MAX, description=_CRON)
    timezone: str | None = Field(
        default=None, min_length=1, max_length=TIMEZONE_MAX, description=_TIMEZONE
    )
    input: dict[str, Any] | None = Field(default=None, description=_INPUT)
    enabled: bool | None = Field(
        default=None, description="false pauses; true resumes from now (missed ticks not run)"
    )
    overlap: Overlap | None = Field(default=None, description=_OVERLAP)
    catch_up: CatchUp | None = Field(default=None, description=_CATCH_UP)


class ScheduleOut(BaseModel):
    id: uuid.UUID
    workflow_id: uuid.UUID
    cron: str
    timezone: str
    input: dict[str, Any]
    enabled: bool
    overlap: Overlap
    catch_up: CatchUp
    next_runs: list[datetime] = Field(
        description="The next five ticks (UTC); empty while the schedule or its workflow is "
        "disabled"
    )
    last_execution_id: uuid.UUID | None
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class TickOut(BaseModel):
    tick_at: datetime
    status: str = Field(description="started, queued, skipped or failed")
    reason: str | None = Field(description="Why it was skipped or failed")
    execution_id: uuid.UUID | None
    created_at: datetime
