"""Fires the schedules (docs/TRIGGERS.md, Schedules): `UPKEEP` runs on every worker, every
SCHEDULE_INTERVAL_SECONDS, and until that interval is over waits for the next tick due within
it, so a tick is queued moments after its time rather than up to an interval later.

Exactly once per tick, however many workers look, comes from PostgreSQL. A round takes the due
schedules with `FOR UPDATE SKIP LOCKED` (another worker's round takes the others), and in that
one transaction records each tick (unique per schedule and tick time: a second guard, the
insert skips a tick already recorded and nothing starts for it), creates the executions and
moves `next_tick_at` past the ticks it handled. A worker that dies mid-round rolls all of it
back and the next round does it again; once committed, no round sees those ticks again. Each
created execution is submitted to the fair scheduler after the commit; if the process dies in
between, the execution is `queued` without a job and the reconciler submits it
(executions/reconciler.py, "not in the scheduler at all").

A round runs on the privileged role (system_transaction): the due schedules of every
organization are found and locked in one statement, which the tenant role cannot do. Every row
it writes names its organization explicitly (the schedule's; the execution takes its
workflow's, and only a schedule whose workflow is in its own organization is taken), so nothing
crosses tenants; it reads and writes schedules, their ticks, and executions through
`start_execution`, nothing else.

For each tick: the input templates are rendered with `schedule.tick` and `schedule.id`
(in-process: they were checked cheap when saved); `overlap` decides against the previous
execution of the schedule (`skip`, `allow`, `queue` up to MAX_QUEUED_TICKS waiting ticks, which
`drain_queued` starts one at a time as the previous execution ends); a tick that fails to
render, conform to the workflow's input_schema, or find room in the organization's queue is
recorded `failed` with the reason (a refused start writes nothing; see `_start`).
Which ticks a round handles, missed ones included, is tick_plan.py's. A disabled workflow's
schedules fire nothing and pile nothing up: their next tick moves on."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom import input_guard
from taskloom.db.tenancy import system_transaction
from taskloom.errors import DomainError
from taskloom.executions import templating
from taskloom.executions.models import ExecutionStatus, WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.executions.service import Origin, StartKind, start_execution
from taskloom.observability.metrics import SCHEDULE_LAG, TRIGGERS
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime
from taskloom.triggers.models import Overlap, ScheduleTick, TickStatus, WorkflowSchedule
from taskloom.triggers.schedules import tick_scope
from taskloom.triggers.tick_plan import DueSchedule, Tick, plan
from taskloom.workflows.models import Workflow

log = structlog.get_logger("taskloom.triggers")

BATCH = 100  # schedules per round (one transaction)
MAX_QUEUED_TICKS = 10  # overlap `queue`: ticks waiting for the previous execution
_ACTIVE = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING)
_ENDED = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED)
_MIN_SLEEP = 0.02  # a due tick another worker holds: look again this much later
# Each worker wakes for a due tick up to this much late, at random: which worker takes the
# round is then a fair draw each time, not decided by the phase of their upkeep loops.
_WAKE_JITTER = 0.025
_STILL_RUNNING = "the previous execution is still running"
_WAITS = "waits for the previous execution to end"


@dataclass
class _Fired:
    """What a committed round did: executions to submit, counts and lags to report."""

    started: list[Tick] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, result: str, n: int = 1) -> None:
        if n:
            self.counts[result] = self.counts.get(result, 0) + n


# --- a round ----------------------------------------------------------------------------------


def _due_query(now: Any, *, queued: bool) -> Any:
    """Due schedules (or, `queued`, those whose waiting ticks may start: their previous execution
    ended) with their workflow's state and their previous execution's, locked, skipping the
    rows another round holds."""
    previous = WorkflowExecution
    query = (
        select(
            WorkflowSchedule.id,
            WorkflowSchedule.org_id,
            WorkflowSchedule.workflow_id,
            WorkflowSchedule.cron,
            WorkflowSchedule.timezone,
            WorkflowSchedule.input,
            WorkflowSchedule.overlap,
            WorkflowSchedule.catch_up,
            WorkflowSchedule.next_tick_at,
            WorkflowSchedule.last_execution_id,
            WorkflowSchedule.queued_ticks,
            Workflow.enabled.label("workflow_enabled"),
            previous.status.in_(_ACTIVE).label("previous_active"),
            now.label("now"),
        )
        .join(
            Workflow,
            (Workflow.id == WorkflowSchedule.workflow_id)
            & (Workflow.org_id == WorkflowSchedule.org_id),
        )
        .outerjoin(previous, previous.id == WorkflowSchedule.last_execution_id)
    )
    if queued:
        query = query.where(
            WorkflowSchedule.queued_ticks > 0,
            WorkflowSchedule.enabled,
            Workflow.enabled,
            previous.id.is_(None) | previous.status.in_(_ENDED),
        ).order_by(WorkflowSchedule.id)
    else:
        query = query.where(
            WorkflowSchedule.enabled, WorkflowSchedule.next_tick_at <= now
        ).order_by(WorkflowSchedule.next_tick_at)
    return query.limit(BATCH).with_for_update(of=WorkflowSchedule, skip_locked=True)


async def _lock(db: AsyncSession, *, queued: bool) -> tuple[list[DueSchedule], datetime]:
    rows = (await db.execute(_due_query(func.now(), queued=queued))).all()
    schedules = [
        DueSchedule(
            id=row.id,
            org_id=row.org_id,
            workflow_id=row.workflow_id,
            cron=row.cron,
            timezone=row.timezone,
            input=row.input,
            overlap=row.overlap,
            catch_up=row.catch_up,
            next_tick_at=row.next_tick_at,
            last_execution_id=row.last_execution_id,
            queued_ticks=row.queued_ticks,
            workflow_enabled=row.workflow_enabled,
            previous_active=bool(row.previous_active),  # NULL: no previous execution
        )
        for row in rows
    ]
    return schedules, (rows[0].now if rows else datetime.now(UTC))


async def _record(db: AsyncSession, ticks: list[Tick]) -> list[Tick]:
    """Insert the ticks' rows; those already recorded (a second guard: a round never sees a
    committed tick again) are left out, and nothing starts for them."""
    if not ticks:
        return []
    inserted = set(
        (
            await db.execute(
                insert(ScheduleTick)
                .on_conflict_do_nothing(index_elements=["schedule_id", "tick_at"])
                .returning(ScheduleTick.id),
                [tick.row() for tick in ticks],
            )
        ).scalars()
    )
    if len(inserted) < len(ticks):
        log.warning("schedule_ticks_already_recorded", count=len(ticks) - len(inserted))
    return [tick for tick in ticks if tick.id in inserted]


async def _start(db: AsyncSession, runtime: Runtime, tick: Tick, *, careful: bool) -> None:
    """Create the tick's execution, or mark the tick failed with the reason. start_execution
    refuses (workflow disabled, input_schema, queue full) before it writes anything when given
    no idempotency key, so a refusal needs no savepoint (one per start made a round of starts
    40 % slower, measured). `careful` adds one anyway, so that a database error fails only its
    own tick: rounds run so after such an error aborted a round."""
    schedule = tick.schedule
    try:
        if not templating.is_cheap(schedule.input):  # refused when saved; a rule may change
            raise templating.TemplateProblem("input", "too expensive to render in the ticker")
        rendered = templating.render(schedule.input, tick_scope(schedule.id, tick.tick_at), "input")
        input_guard.check_decoded(rendered, "input")  # refused when saved; a rule may change
        limit = runtime.settings.max_queued_per_org
        async with db.begin_nested() if careful else contextlib.nullcontext():
            started = await start_execution(
                db=db,
                org_id=schedule.org_id,
                workflow_id=schedule.workflow_id,
                input=rendered,
                max_queued=None if runtime.fair.surely_below(schedule.org_id, limit) else limit,
                origin=Origin(kind=StartKind.SCHEDULE, trigger_id=schedule.id),
            )
    except templating.TemplateProblem as problem:
        tick.status, tick.reason = TickStatus.FAILED, f"the input did not render: {problem}"
        return
    except input_guard.BadInput as bad:
        tick.status, tick.reason = TickStatus.FAILED, f"the input cannot be stored: {bad}"
        return
    except DomainError as refused:  # input_schema, queue full, workflow disabled meanwhile
        tick.status, tick.reason = TickStatus.FAILED, refused.message
        return
    except DBAPIError:
        if not careful:
            raise
        log.exception("schedule_tick_start_failed", schedule_id=str(schedule.id))
        tick.status, tick.reason = TickStatus.FAILED, "the execution could not be created"
        return
    tick.status, tick.execution_id = TickStatus.STARTED, started.execution.id
    schedule.last_execution_id, schedule.previous_active = tick.execution_id, True


async def _decide(db: AsyncSession, runtime: Runtime, tick: Tick, *, careful: bool) -> None:
    """Start a tick due to run, or skip or queue it as the schedule's overlap says."""
    schedule = tick.schedule
    if schedule.overlap == Overlap.SKIP and schedule.previous_active:
        tick.status, tick.reason = TickStatus.SKIPPED, _STILL_RUNNING
    elif schedule.overlap == Overlap.QUEUE and (
        schedule.previous_active or schedule.queued_ticks > 0
    ):
        if schedule.queued_ticks < MAX_QUEUED_TICKS:
            tick.status, tick.reason = TickStatus.QUEUED, _WAITS
            schedule.queued_ticks += 1
        else:
            tick.status, tick.reason = TickStatus.SKIPPED, "queue of ticks full"
    else:
        await _start(db, runtime, tick, careful=careful)


_UPDATE_TICK = text(
    "update schedule_ticks set status = :status, reason = :reason, execution_id = :execution_id"
    " where id = :id"
)
# The ticker's bookkeeping is no change of the schedule: updated_at stays.
_UPDATE_SCHEDULE = text(
    "update workflow_schedules set next_tick_at = :next_tick_at, enabled = :enabled,"
    " last_execution_id = :last_execution_id, queued_ticks = :queued_ticks where id = :id"
)


async def _save(db: AsyncSession, schedules: list[DueSchedule], ran: list[Tick]) -> None:
    if ran:
        await db.execute(
            _UPDATE_TICK,
            [
                {"id": t.id, "status": t.status, "reason": t.reason, "execution_id": t.execution_id}
                for t in ran
            ],
        )
    await db.execute(
        _UPDATE_SCHEDULE,
        [
            {
                "id": s.id,
                "next_tick_at": s.next_tick_at,
                "enabled": s.enabled,
                "last_execution_id": s.last_execution_id,
                "queued_ticks": s.queued_ticks,
            }
            for s in schedules
        ],
    )


async def _drop_queued(db: AsyncSession, schedules: list[DueSchedule]) -> None:
    """A disabled workflow starts nothing: its schedules' waiting ticks are skipped."""
    dropping = [s for s in schedules if not s.workflow_enabled and s.queued_ticks > 0]
    if not dropping:
        return
    await db.execute(
        text(
            "update schedule_ticks set status = 'skipped', reason = 'the workflow is disabled'"
            " where schedule_id = any(:ids) and status = 'queued'"
        ),
        {"ids": [s.id for s in dropping]},
    )
    for schedule in dropping:
        schedule.queued_ticks = 0


async def _preload_workflows(db: AsyncSession, schedules: list[DueSchedule]) -> None:
    """The workflows to start, in the session's identity map: start_execution finds each there
    instead of asking PostgreSQL once per tick."""
    ids = {s.workflow_id for s in schedules if s.workflow_enabled}
    if ids:
        await db.execute(select(Workflow).where(Workflow.id.in_(ids)))


async def fire_round(runtime: Runtime) -> tuple[_Fired, int]:
    """One round: the due schedules (at most BATCH) handled and committed. Returns what to do
    after the commit and how many schedules it took. A database error in it (one execution's
    insert, say) rolls it all back; it runs again at once with a savepoint per start, so one
    bad schedule cannot hold the others back."""
    try:
        return await _round(runtime, careful=False)
    except DBAPIError:
        log.warning("schedule_round_failed", exc_info=True)
        return await _round(runtime, careful=True)


async def _round(runtime: Runtime, *, careful: bool) -> tuple[_Fired, int]:
    fired, misfire = _Fired(), runtime.settings.schedule_misfire_seconds
    async with system_transaction(runtime.database) as db:
        schedules, now = await _lock(db, queued=False)
        if not schedules:
            return fired, 0
        planned = []
        for schedule in schedules:
            ticks, uncounted = plan(schedule, now, misfire)
            planned += ticks
            fired.count(TickStatus.SKIPPED, uncounted)
        ticks = await _record(db, planned)
        await _preload_workflows(db, schedules)
        ran = [t for t in ticks if t.run]
        for tick in ran:
            await _decide(db, runtime, tick, careful=careful)
        await _drop_queued(db, schedules)
        await _save(db, schedules, ran)
    for tick in ticks:
        fired.count(tick.status)
    fired.started = [t for t in ran if t.status == TickStatus.STARTED]
    return fired, len(schedules)


async def drain_queued(runtime: Runtime) -> _Fired:
    """Overlap `queue`: for each schedule whose previous execution has ended, start its oldest
    waiting tick (one per schedule and round)."""
    fired = _Fired()
    async with system_transaction(runtime.database) as db:
        schedules, _ = await _lock(db, queued=True)
        if not schedules:
            return fired
        waiting = func.count().over(partition_by=ScheduleTick.schedule_id)
        oldest = await db.execute(
            select(ScheduleTick.id, ScheduleTick.schedule_id, ScheduleTick.tick_at, waiting)
            .where(
                ScheduleTick.schedule_id.in_([s.id for s in schedules]),
                ScheduleTick.status == TickStatus.QUEUED,
            )
            .order_by(ScheduleTick.schedule_id, ScheduleTick.tick_at)
            .ext(distinct_on(ScheduleTick.schedule_id))
        )
        by_id = {s.id: s for s in schedules}
        for schedule in schedules:  # counted again from the ticks really waiting
            schedule.queued_ticks = 0
        ran = []
        for tick_id, schedule_id, tick_at, count in oldest.all():
            schedule = by_id[schedule_id]
            schedule.queued_ticks = count - 1
            tick = Tick(schedule, tick_at, TickStatus.STARTED, id=tick_id)
            await _start(db, runtime, tick, careful=True)  # a few at most: no hurry
            ran.append(tick)
        await _save(db, schedules, ran)
    for tick in ran:
        fired.count(tick.status)
    fired.started = [t for t in ran if t.status == TickStatus.STARTED]
    return fired


async def _after_commit(runtime: Runtime, fired: _Fired, *, on_time: bool) -> None:
    """Submit the created executions to the fair scheduler, then count and time the ticks. A
    failed submission leaves its execution queued without a job: the reconciler submits it."""
    queue = ExecutionQueue(runtime)
    try:
        for tick in fired.started:
            assert tick.execution_id is not None
            await queue.submit(execution_id=tick.execution_id, org_id=tick.schedule.org_id)
    except Exception:
        log.exception("schedule_submit_failed", executions=len(fired.started))
    now = datetime.now(UTC)
    if on_time:  # a waiting tick's lateness is its overlap's, not the ticker's
        for tick in fired.started:
            SCHEDULE_LAG.observe(max(0.0, (now - tick.tick_at).total_seconds()))
    for result, n in fired.counts.items():
        TRIGGERS.labels(StartKind.SCHEDULE, result).inc(n)
    if fired.counts:
        log.info("schedule_ticks", **fired.counts)


async def _outlook(runtime: Runtime) -> tuple[bool, float | None]:
    """Whether any enabled schedule has waiting ticks (those `drain_queued` may start), and the
    seconds until the earliest next tick of any (negative: due, or held by another worker's
    round; None: no schedule): one statement, so an idle ticker costs one transaction a round."""
    async with system_transaction(runtime.database) as db:
        queued, wait = (
            await db.execute(
                select(
                    func.coalesce(func.bool_or(WorkflowSchedule.queued_ticks > 0), False),
                    func.extract("epoch", func.min(WorkflowSchedule.next_tick_at) - func.now()),
                ).where(WorkflowSchedule.enabled)
            )
        ).one()
    return bool(queued), None if wait is None else float(wait)


async def fire_schedules(runtime: Runtime) -> None:
    """The upkeep: start the waiting ticks whose turn has come, then fire due ticks, round after
    round, until SCHEDULE_INTERVAL_SECONDS from now, waiting for a tick due before then or within
    the next interval (so every worker is awake when a tick falls due, whatever the phase of its
    upkeep loop). The rounds that would find nothing (no waiting tick, nothing due) are not run."""
    interval = runtime.settings.schedule_interval_seconds
    deadline = time.monotonic() + interval
    queued, wait = await _outlook(runtime)
    if queued:
        await _after_commit(runtime, await drain_queued(runtime), on_time=False)
    while True:
        if wait is not None and wait <= 0:
            fired, taken = await fire_round(runtime)
            await _after_commit(runtime, fired, on_time=True)
            if taken == BATCH:
                continue  # more may be due now
            _, wait = await _outlook(runtime)
        if wait is None or time.monotonic() + wait >= deadline + interval:
            return
        await asyncio.sleep(max(wait, _MIN_SLEEP) + random.uniform(0, _WAKE_JITTER))
        wait = 0.0  # the tick waited for is due now


UPKEEP = Upkeep(
    name="schedule_ticks",
    run=fire_schedules,
    leader_only=False,
    interval=lambda settings: settings.schedule_interval_seconds,
)
