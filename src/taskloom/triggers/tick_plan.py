"""Which ticks of a due schedule a ticker round handles, and what becomes of the missed ones
(docs/TRIGGERS.md, Missed ticks). Pure: the ticker (ticker.py) locks the schedules, records the
ticks and starts their executions.

A tick later than SCHEDULE_MISFIRE_SECONDS when first seen was missed (no worker ran): of those,
the newest MAX_CATCH_UP are recorded, skipped or run as the schedule's `catch_up` says, and the
older ones only counted. Ticks within the window always run, at most PER_ROUND of a schedule
per round (the rest in the next one)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from taskloom.triggers.cron import CronError, CronSchedule
from taskloom.triggers.models import CatchUp, TickStatus
from taskloom.triggers.schedules import rfc3339

PER_ROUND = 100  # on-time ticks of one schedule per round; more wait for the next round
MAX_CATCH_UP = 100  # missed ticks of one schedule recorded (and, catch_up `all`, run)
MAX_COUNTED = 10_000  # older missed ticks are counted up to this, then "more than"
MISSED = "missed: no worker was running"


@dataclass
class DueSchedule:
    """A locked schedule and what this round changes of it."""

    id: uuid.UUID
    org_id: uuid.UUID
    workflow_id: uuid.UUID
    cron: str
    timezone: str
    input: dict[str, Any]
    overlap: str
    catch_up: str
    next_tick_at: datetime
    last_execution_id: uuid.UUID | None
    queued_ticks: int
    workflow_enabled: bool
    previous_active: bool  # its last execution is queued, running or waiting
    enabled: bool = True


@dataclass
class Tick:
    """One tick of a due schedule: planned here, decided and recorded by the ticker."""

    schedule: DueSchedule
    tick_at: datetime
    status: TickStatus  # final for skipped ticks; provisional (started) for ticks to run
    reason: str | None = None
    run: bool = False
    execution_id: uuid.UUID | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "org_id": self.schedule.org_id,
            "schedule_id": self.schedule.id,
            "tick_at": self.tick_at,
            "status": self.status,
            "reason": self.reason,
        }


# --- planning: which ticks a due schedule has, and what becomes of missed ones ---------------


def _first_at_or_after(cron: CronSchedule, moment: datetime) -> datetime:
    return cron.next_after(moment - timedelta(microseconds=1))


def _missed(schedule: DueSchedule, cron: CronSchedule, cutoff: datetime) -> tuple[list[Tick], int]:
    """The newest MAX_CATCH_UP ticks from next_tick_at to `cutoff` (oldest first), run or
    skipped as `catch_up` says; older ones are counted (returned, and in the first one's
    reason)."""
    newest = cron.previous_before(cutoff, MAX_CATCH_UP, schedule.next_tick_at)
    ticks = [Tick(schedule, t, TickStatus.SKIPPED, MISSED) for t in reversed(newest)]
    if not ticks:
        return ticks, 0
    if schedule.catch_up == CatchUp.ALL:
        for tick in ticks:
            tick.status, tick.reason, tick.run = TickStatus.STARTED, None, True
    elif schedule.catch_up == CatchUp.ONE:
        ticks[-1].status, ticks[-1].reason, ticks[-1].run = TickStatus.STARTED, None, True
    older, at = 0, _first_at_or_after(cron, schedule.next_tick_at)
    while at < ticks[0].tick_at and older < MAX_COUNTED:
        older, at = older + 1, cron.next_after(at)
    if older:
        counted = f"{older}" if at >= ticks[0].tick_at else f"more than {MAX_COUNTED}"
        since = rfc3339(schedule.next_tick_at)
        note = f"{counted} earlier missed ticks since {since} were skipped and not recorded"
        ticks[0].reason = f"{ticks[0].reason}; {note}" if ticks[0].reason else note
    return ticks, older


def plan(schedule: DueSchedule, now: datetime, misfire: float) -> tuple[list[Tick], int]:
    """The ticks of a due schedule this round handles, oldest first, and how many older missed
    ticks are only counted; moves its next_tick_at past them. A disabled workflow's schedule
    handles none: its next tick moves past now."""
    try:
        cron = CronSchedule.parse(schedule.cron, schedule.timezone)
    except CronError as error:  # stored before a rule changed: pause it, say why once
        schedule.enabled = False
        reason = f"the schedule was paused: its {error.field} is no longer valid ({error})"
        return [Tick(schedule, schedule.next_tick_at, TickStatus.FAILED, reason)], 0
    if not schedule.workflow_enabled:
        schedule.next_tick_at = cron.next_after(now)
        return [], 0
    cutoff = now - timedelta(seconds=misfire)
    ticks: list[Tick] = []
    uncounted = 0
    if schedule.next_tick_at < cutoff:
        ticks, uncounted = _missed(schedule, cron, cutoff)
        at = _first_at_or_after(cron, cutoff)
    else:
        at = schedule.next_tick_at
    on_time = 0
    while at <= now and on_time < PER_ROUND:
        ticks.append(Tick(schedule, at, TickStatus.STARTED, run=True))
        at, on_time = cron.next_after(at), on_time + 1
    schedule.next_tick_at = at
    return ticks, uncounted
