"""Cron schedules of a workflow, as the API sees them: create (the expression, zone and input
templates checked here), read with their next runs, change, pause and resume, delete, and read
the ticks they fired. Every query runs in the caller's tenant transaction, so another
organization's schedules are simply not there (404). Firing them is ticker.py's job.

`next_tick_at` (the first tick not yet handled) is set to the first tick after now whenever a
schedule is created, its cron or zone changes, or it is resumed: ticks that fell while it was
paused are not caught up."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom import input_guard
from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.errors import Conflict, NotFound, ValidationFailed
from taskloom.executions import templating
from taskloom.triggers.cron import CronError, CronSchedule
from taskloom.triggers.models import ScheduleTick, TickStatus, WorkflowSchedule
from taskloom.triggers.schedule_schemas import ScheduleCreate, ScheduleUpdate
from taskloom.workflows.models import Workflow
from taskloom.workflows.service import get_workflow

NEXT_RUNS = 5
MAX_TICKS_SHOWN = 100
# What an input template may read: the tick's time and the schedule's id, nothing else.
TEMPLATE_NAMES = frozenset({"schedule"})
_SAMPLE_TICK = datetime(2000, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ScheduleView:
    """A schedule and its next runs (none while it or its workflow is disabled)."""

    schedule: WorkflowSchedule
    next_runs: list[datetime]


def rfc3339(moment: datetime) -> str:
    """`2027-03-28T01:00:00Z`: how a tick is written in templates and answers."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def tick_scope(schedule_id: uuid.UUID, tick_at: datetime) -> dict[str, Any]:
    """What a schedule's input templates see for one tick."""
    return {"schedule": {"tick": rfc3339(tick_at), "id": str(schedule_id)}}


def _invalid(loc: list[str], message: str) -> ValidationFailed:
    where = ".".join(loc)
    return ValidationFailed(
        f"{where}: {message}", details={"errors": [{"loc": loc, "message": message}]}
    )


def parse_cron(expression: str, timezone: str) -> CronSchedule:
    """The checked schedule, or ValidationFailed naming `body.cron` or `body.timezone`."""
    try:
        return CronSchedule.parse(expression, timezone)
    except CronError as error:
        raise _invalid(["body", error.field], str(error)) from None


def check_input(schedule_id: uuid.UUID, value: dict[str, Any]) -> None:
    """ValidationFailed unless every template in `value` parses, is cheap enough to render in
    the ticker's process (executions/templating.is_cheap), reads only `schedule.tick` and
    `schedule.id`, and renders for a sample tick to something PostgreSQL can store."""
    try:
        templating.check_syntax(value, "input")
    except templating.TemplateProblem as problem:
        raise _invalid(["body", *problem.path.split(".")], problem.message) from None
    if not templating.is_cheap(value):
        raise _invalid(
            ["body", "input"],
            "a schedule's input templates may only look values up (no loops, calls or "
            "expensive filters): they are rendered by the ticker itself",
        )
    unknown = templating.names_used(value) - TEMPLATE_NAMES
    if unknown:
        raise _invalid(
            ["body", "input"],
            f"a schedule's input templates may only read schedule.tick and schedule.id, "
            f"not {', '.join(sorted(unknown))}",
        )
    try:  # reading anything else under `schedule` fails here, not at every tick
        rendered = templating.render(value, tick_scope(schedule_id, _SAMPLE_TICK), "input")
    except templating.TemplateProblem as problem:
        raise _invalid(["body", *problem.path.split(".")], problem.message) from None
    try:  # `{{ '\u0000' }}` renders what PostgreSQL cannot store, at every tick
        input_guard.check_decoded(rendered, "body.input")
    except input_guard.BadInput as bad:
        raise _invalid(bad.where.split("."), f"renders to a value that {bad.problem}") from None


def upcoming(
    schedule: WorkflowSchedule, *, workflow_enabled: bool, now: datetime | None = None
) -> list[datetime]:
    """The next NEXT_RUNS ticks after now; none while the schedule or its workflow is disabled
    (neither fires then)."""
    if not (schedule.enabled and workflow_enabled):
        return []
    cron = CronSchedule.parse(schedule.cron, schedule.timezone)
    return cron.next_runs(now or datetime.now(UTC), NEXT_RUNS)


async def _database_now(db: AsyncSession) -> datetime:
    """PostgreSQL's clock, which the ticker reads too: the first tick after it is one no worker
    has handled yet, whatever this process's clock says."""
    now: datetime = (await db.execute(select(func.clock_timestamp()))).scalar_one()
    return now


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    schedule: WorkflowSchedule,
    details: dict[str, Any],
) -> None:
    """Audited with what it fires and when, never its input (it may hold personal data)."""
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=schedule.org_id,
        resource_type="schedule",
        resource_id=schedule.id,
        details={
            "workflow_id": str(schedule.workflow_id),
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "enabled": schedule.enabled,
            **details,
        },
    )


async def _check_allowance(db: AsyncSession, org_id: uuid.UUID, limit: int) -> None:
    """Refuse a new schedule past MAX_SCHEDULES_PER_ORG: every schedule costs every worker a
    share of each ticker round. The transaction lock makes two concurrent creations count one
    after the other."""
    await db.execute(
        text("select pg_advisory_xact_lock(hashtextextended('taskloom.schedules:' || :o, 0))"),
        {"o": str(org_id)},
    )
    count = await db.scalar(
        select(func.count()).select_from(WorkflowSchedule).where(WorkflowSchedule.org_id == org_id)
    )
    if (count or 0) >= limit:
        raise Conflict(
            f"this organization already has {count} schedules, the most allowed "
            "(MAX_SCHEDULES_PER_ORG); delete one first",
            code="schedule_limit",
        )


async def create_schedule(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    settings: Settings,
    workflow_id: uuid.UUID,
    body: ScheduleCreate,
) -> ScheduleView:
    """A schedule of the workflow (NotFound when it is not in the caller's organization)."""
    workflow = await get_workflow(db=db, workflow_id=workflow_id)
    cron = parse_cron(body.cron, body.timezone)
    schedule_id = uuid.uuid4()
    check_input(schedule_id, body.input)
    await _check_allowance(db, workflow.org_id, settings.max_schedules_per_org)
    schedule = WorkflowSchedule(
        id=schedule_id,
        org_id=workflow.org_id,
        workflow_id=workflow.id,
        cron=cron.expression,
        timezone=cron.timezone,
        input=body.input,
        enabled=body.enabled,
        overlap=body.overlap,
        catch_up=body.catch_up,
        next_tick_at=cron.next_after(await _database_now(db)),
        created_by=principal.user_id,
    )
    db.add(schedule)
    await db.flush()
    await db.refresh(schedule)
    await _audit(db, context, AuditAction.SCHEDULE_CREATE, schedule, {})
    return ScheduleView(schedule, upcoming(schedule, workflow_enabled=workflow.enabled))


async def list_schedules(*, db: AsyncSession, workflow_id: uuid.UUID) -> list[ScheduleView]:
    """The workflow's schedules, oldest first (NotFound for a workflow not in the caller's
    organization)."""
    workflow = await get_workflow(db=db, workflow_id=workflow_id)
    rows = await db.execute(
        select(WorkflowSchedule)
        .where(WorkflowSchedule.workflow_id == workflow.id)
        .order_by(WorkflowSchedule.created_at, WorkflowSchedule.id)
    )
    now = datetime.now(UTC)
    return [
        ScheduleView(s, upcoming(s, workflow_enabled=workflow.enabled, now=now))
        for s in rows.scalars()
    ]


async def _get(
    db: AsyncSession, schedule_id: uuid.UUID, *, for_update: bool = False
) -> tuple[WorkflowSchedule, bool]:
    """The schedule and whether its workflow is enabled, or NotFound (also when it belongs to
    another organization)."""
    query = (
        select(WorkflowSchedule, Workflow.enabled)
        .join(Workflow, Workflow.id == WorkflowSchedule.workflow_id)
        .where(WorkflowSchedule.id == schedule_id)
    )
    if for_update:  # the ticker holds it while it fires a tick: wait for that to commit
        query = query.with_for_update(of=WorkflowSchedule)
    row = (await db.execute(query)).first()
    if row is None:
        raise NotFound("schedule not found")
    return row[0], bool(row[1])


async def get_schedule(*, db: AsyncSession, schedule_id: uuid.UUID) -> ScheduleView:
    schedule, workflow_enabled = await _get(db, schedule_id)
    return ScheduleView(schedule, upcoming(schedule, workflow_enabled=workflow_enabled))


async def update_schedule(
    *, db: AsyncSession, context: AuditContext, schedule_id: uuid.UUID, body: ScheduleUpdate
) -> ScheduleView:
    """Change any of the fields. A new cron or zone, or a resume, starts over from the first
    tick after now; a pause drops the ticks waiting for the previous execution (overlap
    `queue`), recorded as skipped."""
    schedule, workflow_enabled = await _get(db, schedule_id, for_update=True)
    cron = parse_cron(
        body.cron if body.cron is not None else schedule.cron,
        body.timezone if body.timezone is not None else schedule.timezone,
    )
    if body.input is not None:
        check_input(schedule.id, body.input)
        schedule.input = body.input
    if body.overlap is not None:
        schedule.overlap = body.overlap
    if body.catch_up is not None:
        schedule.catch_up = body.catch_up
    restart = (cron.expression, cron.timezone) != (schedule.cron, schedule.timezone)
    schedule.cron, schedule.timezone = cron.expression, cron.timezone
    if body.enabled is not None and body.enabled != schedule.enabled:
        restart = restart or body.enabled
        schedule.enabled = body.enabled
        if not body.enabled:
            await _drop_queued_ticks(db, schedule, "the schedule was paused")
    if restart:
        schedule.next_tick_at = cron.next_after(await _database_now(db))
    await db.flush()
    await db.refresh(schedule)
    fields = sorted(body.model_fields_set)
    await _audit(db, context, AuditAction.SCHEDULE_UPDATE, schedule, {"fields": fields})
    return ScheduleView(schedule, upcoming(schedule, workflow_enabled=workflow_enabled))


async def _drop_queued_ticks(db: AsyncSession, schedule: WorkflowSchedule, reason: str) -> None:
    if schedule.queued_ticks == 0:
        return
    await db.execute(
        update(ScheduleTick)
        .where(ScheduleTick.schedule_id == schedule.id, ScheduleTick.status == TickStatus.QUEUED)
        .values(status=TickStatus.SKIPPED, reason=reason)
    )
    schedule.queued_ticks = 0


async def delete_schedule(
    *, db: AsyncSession, context: AuditContext, schedule_id: uuid.UUID
) -> None:
    """Delete it and its ticks; executions it started stay (their trigger_id names it)."""
    schedule, _ = await _get(db, schedule_id, for_update=True)
    await _audit(db, context, AuditAction.SCHEDULE_DELETE, schedule, {})
    await db.delete(schedule)
    await db.flush()


async def list_ticks(*, db: AsyncSession, schedule_id: uuid.UUID, limit: int) -> list[ScheduleTick]:
    """The schedule's last `limit` ticks (at most MAX_TICKS_SHOWN), newest first."""
    await _get(db, schedule_id)
    rows = await db.execute(
        select(ScheduleTick)
        .where(ScheduleTick.schedule_id == schedule_id)
        .order_by(ScheduleTick.tick_at.desc())
        .limit(max(1, min(limit, MAX_TICKS_SHOWN)))
    )
    return list(rows.scalars())
