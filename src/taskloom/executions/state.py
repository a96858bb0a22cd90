"""The state of one execution as a worker drives it. Each function is one short transaction in
the execution's tenant, so a step's result is durable the moment the step is done and a job
that runs again (after a crash, a hand-back or a retry) resumes at the first unfinished step.

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
       ▲                 │
       └── retry wait, hand-back on shutdown ──┘
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.db.driver import app_connection
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.executions.live import LiveEvents
from taskloom.executions.models import (
    ExecutionStatus,
    ExecutionStep,
    ExecutionStepItem,
    StepStatus,
    WorkflowExecution,
)
from taskloom.executions.plan import StepState
from taskloom.observability.request_id import current_request_id

TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
WAKE_BATCH = 200  # waiting executions the waker moves back to the queue per round
_SECRET_KEY = re.compile(r"authorization|token|secret|password|passwd|api[-_]?key|cookie", re.I)


class Claim(enum.Enum):
    RUN = "run"
    GONE = "gone"  # deleted with its workflow
    FINISHED = "finished"  # already terminal: acknowledge without running anything
    CANCELLED = "cancelled"  # cancel was requested before it started
    DEFER = "defer"  # the organization is at MAX_RUNNING_PER_ORG


@dataclass
class Item:
    """A for-each item's row as the claim found it."""

    status: str
    output: Any = None


@dataclass
class Run:
    """What a worker needs to run (or resume) an execution."""

    execution_id: uuid.UUID
    org_id: uuid.UUID
    definition: dict[str, Any]
    input: dict[str, Any]
    # The steps' states as their rows say (a step left `running` by a crash reads as pending:
    # it runs again), and for-each items by step id and index.
    states: dict[str, StepState] = field(default_factory=dict)
    items: dict[str, dict[int, Item]] = field(default_factory=dict)
    step_runs: int = 0  # step and item runs so far (each start counts)
    started_at: datetime | None = None
    triggered_by: uuid.UUID | None = None
    # A child execution's parent (woken when the child ends), its root and depth (0: a root).
    parent_execution_id: uuid.UUID | None = None
    root_execution_id: uuid.UUID | None = None
    depth: int = 0
    # Replaces the values of the organization secrets this execution resolved by
    # `[secret:NAME]` (secrets/resolution.py); None while it resolved none. Every write below
    # of a step's or the execution's input, output or error passes through `scrubbed`: this
    # module is the one boundary where results are persisted (docs/SECRETS.md).
    redact_secrets: Callable[[Any], Any] | None = None
    # The execution's live stream (executions/live.py), set by the engine: each function below
    # that changes a step's or the execution's status adds its events after its commit and
    # flushes them (one pipeline per commit point). None: nothing is published.
    live: LiveEvents | None = None

    def scrubbed(self, value: Any) -> Any:
        return value if self.redact_secrets is None else self.redact_secrets(value)

    @property
    def done(self) -> dict[str, Any]:
        """Outputs of the steps that succeeded, by step id."""
        return {k: v.output for k, v in self.states.items() if v.status == StepStatus.SUCCEEDED}


def step_event(
    step_id: str, status: str, *, item_index: int | None = None, **extra: Any
) -> dict[str, Any]:
    """A `step` event's data: the step (and item), its status and what else is known (attempt,
    error_code, final, wake_at); absent values are left out."""
    data: dict[str, Any] = {"step_id": step_id, "status": str(status)}
    if item_index is not None:
        data["item_index"] = item_index
    data.update({k: v for k, v in extra.items() if v is not None})
    return data


async def publish(run: Run, *events: tuple[str, dict[str, Any]]) -> None:
    """A commit point: the events of what just committed, with any buffered, in one round trip."""
    if run.live is None:
        return
    for kind, data in events:
        run.live.add(kind, data)
    await run.live.flush()


def _error_code(error: dict[str, Any] | None) -> str | None:
    code = (error or {}).get("code")
    return str(code) if code is not None else None


_CLAIM = "select taskloom_claim($1, $2, $3, $4)"
_STEP_STARTED = "select taskloom_step_started($1, $2, $3, $4, $5, $6)"
_STEP_DONE = "select taskloom_step_done($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
_CANCEL_REQUESTED = "select taskloom_cancel_requested($1, $2, $3)"
_RUN_INLINE = "select taskloom_run_inline($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


async def claim(
    database: Database, *, execution_id: uuid.UUID, org_id: uuid.UUID, max_running: int
) -> tuple[Claim, Run | None]:
    """Mark the execution running if its organization has a free slot (one call of
    `taskloom_claim`, migration 0016: a per-org advisory lock makes count-then-update atomic
    across workers) and read what running it needs: its definition, input and the steps' and
    items' rows."""
    async with app_connection(database) as statements:
        found = await statements.fetchval(
            _CLAIM, org_id, execution_id, max_running, current_request_id()
        )
    claimed = Claim(found["claim"])
    if claimed is not Claim.RUN:
        return claimed, None
    run = Run(
        execution_id=execution_id,
        org_id=org_id,
        definition=found["definition"],
        input=found["input"],
        started_at=datetime.fromtimestamp(found["started_at"], UTC),
        triggered_by=_uuid(found["triggered_by"]),
        parent_execution_id=_uuid(found["parent_execution_id"]),
        root_execution_id=_uuid(found["root_execution_id"]),
        depth=found["depth"],
    )
    tolerant = {s["id"] for s in run.definition.get("steps", []) if s.get("continue_on_error")}
    for step_id, status, output, error, attempts, finished_at in found["steps"]:
        run.step_runs += attempts
        if status not in (StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED):
            continue  # pending or interrupted: it runs (again)
        run.states[step_id] = StepState(
            status=status,
            output=output,
            error=error,
            tolerated=status == StepStatus.FAILED and step_id in tolerant,
            finished=finished_at or 0.0,
        )
    for step_id, index, status, output, attempts in found["items"]:
        run.step_runs += attempts
        run.items.setdefault(step_id, {})[index] = Item(status=status, output=output)
    return Claim.RUN, run


def _uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)


async def cancel_requested(database: Database, run: Run) -> bool:
    """Whether a cancel was requested (one call of `taskloom_cancel_requested`, migration
    0018; False when the execution is gone)."""
    async with app_connection(database) as statements:
        requested: bool = await statements.fetchval(
            _CANCEL_REQUESTED, run.org_id, run.execution_id, current_request_id()
        )
    return requested


async def start_step(
    database: Database, run: Run, *, step_id: str, position: int, type_: str
) -> int:
    """Record that the step starts; returns its attempt number (1 the first time)."""
    async with app_connection(database) as statements:
        attempt: int = await statements.fetchval(
            _STEP_STARTED,
            run.org_id,
            run.execution_id,
            step_id,
            position,
            type_,
            current_request_id(),
        )
    await publish(run, ("step", step_event(step_id, StepStatus.RUNNING, attempt=attempt)))
    return attempt


def _model(item_index: int | None) -> Any:
    """The table of a step's runs (item_index None) or of a for-each item's."""
    return ExecutionStep if item_index is None else ExecutionStepItem


def _where(execution_id: uuid.UUID, step_id: str, item_index: int | None) -> list[Any]:
    """The row of the step (or of its item) in its table."""
    model = _model(item_index)
    where = [model.execution_id == execution_id, model.step_id == step_id]
    if item_index is not None:
        where.append(model.item_index == item_index)
    return where


async def _start_run(
    db: AsyncSession,
    org_id: uuid.UUID,
    execution_id: uuid.UUID,
    *,
    step_id: str,
    item_index: int | None,
    control: bool = False,
    **columns: Any,
) -> Control:
    """Mark the step (or item) running, its row made on the first run: its attempt number (1
    the first time) and what it waits for. A run counts as an attempt, and starts afresh;
    a control step's (`control`) keeps its attempts, its end time and its child: it resumes.
    `columns`: the step row's position and type."""
    model = _model(item_index)
    keys = {"execution_id": execution_id, "step_id": step_id}
    if item_index is not None:
        keys["item_index"] = item_index
    upsert = (
        insert(model)
        .values(
            org_id=org_id,
            status=StepStatus.RUNNING,
            attempts=1,
            started_at=func.now(),
            **keys,
            **columns,
        )
        .on_conflict_do_update(
            index_elements=list(keys),
            set_={"status": StepStatus.RUNNING}
            if control
            else {
                "status": StepStatus.RUNNING,
                "attempts": model.attempts + 1,
                "started_at": func.now(),
                "finished_at": None,
                "error": None,
            },
        )
        .returning(model.attempts, model.wake_at, model.child_execution_id)
    )
    attempt, wake_at, child = (await db.execute(upsert)).one()
    return Control(attempt=attempt, wake_at=wake_at, child_execution_id=child)


async def step_succeeded(
    database: Database,
    run: Run,
    *,
    step_id: str,
    position: int,
    type_: str,
    args: Any,
    output: Any,
    started: bool = True,
    last: bool = False,
    execution_output: Any = None,
) -> bool:
    """Commit the step's output, in one call of `taskloom_step_done` (migration 0018), and
    return whether a cancel was requested (read in the same transaction: the worker need not
    ask again before it starts the next steps). `started` False: the step's start was not
    recorded (a step without I/O: its row is made or updated here, as one more attempt). When
    its success ends the execution (`last`), the execution's success with `execution_output`
    in the same transaction."""
    async with app_connection(database) as statements:
        cancel: bool = await statements.fetchval(
            _STEP_DONE,
            run.org_id,
            run.execution_id,
            step_id,
            position,
            type_,
            json.dumps(run.scrubbed(redact(args))),
            json.dumps(run.scrubbed(output)),
            started,
            last,
            json.dumps(run.scrubbed(execution_output)),
            current_request_id(),
        )
    events = [("step", step_event(step_id, StepStatus.SUCCEEDED))]
    if last:
        events.append(("execution", {"status": str(ExecutionStatus.SUCCEEDED)}))
    await publish(run, *events)
    return cancel


async def finished_inline(
    database: Database,
    run: Run,
    *,
    definition_text: str,
    step_id: str,
    type_: str,
    args: Any,
    output: Any,
    execution_output: Any,
) -> bool:
    """An unclaimed execution's one step and its end, in one call of `taskloom_run_inline`
    (migration 0028, executions/inline.py): True if committed, False if the row was not as the
    run was made from (claimed, cancelled, another definition or input), nothing written."""
    async with app_connection(database) as statements:
        done: bool = await statements.fetchval(
            _RUN_INLINE,
            run.org_id,
            run.execution_id,
            definition_text,
            json.dumps(run.input),
            step_id,
            type_,
            json.dumps(run.scrubbed(redact(args))),
            json.dumps(run.scrubbed(output)),
            json.dumps(run.scrubbed(execution_output)),
            current_request_id(),
        )
    if done:
        await publish(
            run,
            ("step", step_event(step_id, StepStatus.SUCCEEDED)),
            ("execution", {"status": str(ExecutionStatus.SUCCEEDED)}),
        )
    return done


async def record_failure(
    database: Database,
    run: Run,
    *,
    step_id: str,
    item_index: int | None,
    error: dict[str, Any],
    final: bool,
    args: Any,
    output: Any = None,
) -> None:
    """A failed attempt of a step or of one for-each item: `final` marks it failed (with
    `output`, `{"error": …}` under continue_on_error); otherwise it waits for the retry."""
    values: dict[str, Any] = {
        "status": StepStatus.FAILED if final else StepStatus.PENDING,
        "input": run.scrubbed(redact(args)) if args is not None else None,
        "error": run.scrubbed(error),
        "output": run.scrubbed(output),
        "finished_at": func.now() if final else None,
    }
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            update(_model(item_index))
            .where(*_where(run.execution_id, step_id, item_index))
            .values(**values)
        )
    event = step_event(
        step_id,
        StepStatus.FAILED,
        item_index=item_index,
        attempt=error.get("attempt"),
        error_code=_error_code(error),
        final=final,
    )
    await publish(run, ("step", event))


async def step_failed(
    database: Database,
    run: Run,
    *,
    step_id: str,
    error: dict[str, Any],
    final: bool,
    args: Any,
    output: Any = None,
) -> None:
    """A failed attempt of a step: `final` marks it failed; otherwise it waits for the retry."""
    await record_failure(
        database,
        run,
        step_id=step_id,
        item_index=None,
        error=error,
        final=final,
        args=args,
        output=output,
    )


async def start_item(database: Database, run: Run, *, step_id: str, item_index: int) -> int:
    """Record that a for-each item starts; returns its attempt number (1 the first time)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        started = await _start_run(
            db, run.org_id, run.execution_id, step_id=step_id, item_index=item_index
        )
    event = step_event(step_id, StepStatus.RUNNING, item_index=item_index, attempt=started.attempt)
    await publish(run, ("step", event))
    return started.attempt


async def item_succeeded(
    database: Database, run: Run, *, step_id: str, item_index: int, args: Any, output: Any
) -> None:
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            update(ExecutionStepItem)
            .where(*_where(run.execution_id, step_id, item_index))
            .values(
                status=StepStatus.SUCCEEDED,
                input=run.scrubbed(redact(args)),
                output=run.scrubbed(output),
                error=None,
                finished_at=func.now(),
            )
        )
    event = step_event(step_id, StepStatus.SUCCEEDED, item_index=item_index)
    await publish(run, ("step", event))


async def skip_steps(database: Database, run: Run, steps: list[tuple[str, int, str]]) -> None:
    """Record steps as skipped ((step id, position, type) each): by `when`, by their join, or
    left behind a failure."""
    if not steps:
        return
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        statement = insert(ExecutionStep).values(
            [
                {
                    "org_id": run.org_id,
                    "execution_id": run.execution_id,
                    "step_id": step_id,
                    "position": position,
                    "type": type_,
                    "status": StepStatus.SKIPPED,
                    "attempts": 0,
                    "finished_at": func.now(),
                }
                for step_id, position, type_ in steps
            ]
        )
        await db.execute(
            statement.on_conflict_do_update(
                index_elements=["execution_id", "step_id"],
                set_={"status": StepStatus.SKIPPED, "finished_at": func.now()},
            )
        )
    await publish(run, *(("step", step_event(s, StepStatus.SKIPPED)) for s, _, _ in steps))


async def interrupted(
    database: Database,
    run: Run,
    running: set[tuple[str, int | None]],
    *,
    error: dict[str, Any] | None = None,
) -> None:
    """Steps and items this worker left running: pending again (a hand-back: they run again
    elsewhere), or failed with `error` (a cancel, a deadline). Only rows still running change:
    one whose success committed just before the interruption stays done."""
    if not running:
        return
    values: dict[str, Any] = {"status": StepStatus.PENDING}
    if error is not None:
        values = {
            "status": StepStatus.FAILED,
            "error": run.scrubbed(error),
            "finished_at": func.now(),
        }
    steps = sorted({step_id for step_id, index in running if index is None})
    items = sorted((s, i) for s, i in running if i is not None)
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        if steps:
            await db.execute(
                update(ExecutionStep)
                .where(
                    ExecutionStep.execution_id == run.execution_id,
                    ExecutionStep.step_id.in_(steps),
                    ExecutionStep.status == StepStatus.RUNNING,
                )
                .values(**values)
            )
        for step_id, index in items:
            await db.execute(
                update(ExecutionStepItem)
                .where(
                    ExecutionStepItem.execution_id == run.execution_id,
                    ExecutionStepItem.step_id == step_id,
                    ExecutionStepItem.item_index == index,
                    ExecutionStepItem.status == StepStatus.RUNNING,
                )
                .values(**values)
            )
    status, code = values["status"], _error_code(error)
    await publish(
        run,
        *(("step", step_event(s, status, item_index=i, error_code=code)) for s, i in running),
    )


async def finish(
    database: Database,
    run: Run,
    status: ExecutionStatus,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> None:
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        execution = await db.get(WorkflowExecution, run.execution_id, with_for_update=True)
        if execution is None or execution.status in TERMINAL:
            return
        _finish(execution, status, output=run.scrubbed(output), error=run.scrubbed(error))
    ended = {"status": str(status), "error_code": _error_code(error)}
    await publish(run, ("execution", {k: v for k, v in ended.items() if v is not None}))


async def back_to_queue(
    database: Database, run: Run, *, error: dict[str, Any] | None = None
) -> None:
    """Waiting for a retry or handed back: queued again, keeping what is done (never failed)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        values: dict[str, Any] = {"status": ExecutionStatus.QUEUED}
        if error is not None:
            values["error"] = run.scrubbed(error)
        await db.execute(
            update(WorkflowExecution)
            .where(
                WorkflowExecution.id == run.execution_id,
                WorkflowExecution.status == ExecutionStatus.RUNNING,
            )
            .values(**values)
        )


def redact(value: Any) -> Any:
    """A copy with values under secret-looking keys (authorization, api_key, …) replaced."""
    if isinstance(value, dict):
        return {
            key: "***" if _SECRET_KEY.search(str(key)) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def _finish(
    execution: WorkflowExecution,
    status: ExecutionStatus,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> None:
    execution.status = status
    execution.output = output
    execution.error = error
    execution.finished_at = func.now()


# --- waiting (ADR 0008): control steps, parking, waking ------------------------------------------


@dataclass(frozen=True)
class Control:
    """A control step's (or item's) row as it (re)starts: what it already waits for."""

    attempt: int
    wake_at: datetime | None
    child_execution_id: uuid.UUID | None


async def start_control(
    database: Database,
    run: Run,
    *,
    step_id: str,
    item_index: int | None,
    position: int,
    type_: str,
) -> Control:
    """Mark a `wait`, `approval` or `workflow` step (or item) running, keeping what it already
    waits for (its end time, its child) when it runs again after a wake-up or a crash."""
    columns = {} if item_index is not None else {"position": position, "type": type_}
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        started = await _start_run(
            db,
            run.org_id,
            run.execution_id,
            step_id=step_id,
            item_index=item_index,
            control=True,
            **columns,
        )
    event = step_event(step_id, StepStatus.RUNNING, item_index=item_index, attempt=started.attempt)
    await publish(run, ("step", event))
    return started


async def mark_waiting(
    database: Database,
    run: Run,
    *,
    step_id: str,
    item_index: int | None,
    wake_at: datetime | None,
    child_execution_id: uuid.UUID | None = None,
    db: AsyncSession | None = None,
) -> None:
    """The step (or item) waits: until `wake_at`, or for its child to end."""
    values: dict[str, Any] = {"status": StepStatus.WAITING, "wake_at": wake_at}
    if child_execution_id is not None:
        values["child_execution_id"] = child_execution_id
    statement = (
        update(_model(item_index))
        .where(*_where(run.execution_id, step_id, item_index))
        .values(**values)
    )
    event = step_event(step_id, StepStatus.WAITING, item_index=item_index, wake_at=wake_at)
    if db is not None:  # the caller's transaction: published with its next commit point
        await db.execute(statement)
        if run.live is not None:
            run.live.add("step", event)
        return
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as session:
        await session.execute(statement)
    await publish(run, ("step", event))


class Parked(enum.Enum):
    YES = "yes"  # waiting now: the job completes
    READY = "ready"  # something it waits for has happened: go on
    CANCEL = "cancel"  # a cancel was requested: finish as cancelled


async def park(
    database: Database, run: Run, *, wake_at: datetime | None, force: bool = False
) -> Parked:
    """Nothing runs and some steps wait: the execution becomes `waiting` (its job then
    completes and frees its slot) until `wake_at` or an event. False, and nothing changes, when
    something it waits for has already happened (a decision or a child's end that came while it
    ran, a time that has passed): the worker goes on at once. The execution's row lock orders
    this against `wake`, so an event is never missed."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        execution = await db.get(WorkflowExecution, run.execution_id, with_for_update=True)
        if execution is None or execution.status != ExecutionStatus.RUNNING:
            return Parked.YES  # finished or gone meanwhile: nothing to run here
        if execution.cancel_requested_at is not None:
            return Parked.CANCEL
        if not force and await db.scalar(text(_READY_SQL), {"execution": run.execution_id}):
            return Parked.READY
        execution.status = ExecutionStatus.WAITING
        execution.wake_at = wake_at
        return Parked.YES


# Something a waiting step or item waits for has happened: its time, a decision, its child's end.
_READY_SQL = """
select exists (
    select 1 from execution_steps s
    where s.execution_id = :execution and s.status = 'waiting'
      and (s.wake_at <= now()
           or exists (select 1 from workflow_executions c
                      where c.id = s.child_execution_id
                        and c.status in ('succeeded', 'failed', 'cancelled')))
) or exists (
    select 1 from execution_step_items i
    where i.execution_id = :execution and i.status = 'waiting'
      and (i.wake_at <= now()
           or exists (select 1 from workflow_executions c
                      where c.id = i.child_execution_id
                        and c.status in ('succeeded', 'failed', 'cancelled')))
) or exists (
    select 1 from execution_approvals a
    where a.execution_id = :execution
      and (a.status <> 'pending' or a.timeout_at <= now())  -- decided, or its timeout came
      and (a.item_index is null
           and exists (select 1 from execution_steps s
                       where s.execution_id = a.execution_id and s.step_id = a.step_id
                         and s.status = 'waiting')
           -- a for-each item's approval: its item waits, not just its step (whose other items
           -- may still wait for theirs)
           or a.item_index is not null
           and exists (select 1 from execution_step_items i
                       where i.execution_id = a.execution_id and i.step_id = a.step_id
                         and i.item_index = a.item_index and i.status = 'waiting'))
)
"""


async def wake(db: AsyncSession, execution_id: uuid.UUID) -> bool:
    """In the caller's transaction: a waiting execution goes back to `queued` (the caller
    resubmits it after the commit). False when it is not waiting (running: it will see the
    event before it parks; finished; or another waker was first)."""
    woken = await db.execute(
        update(WorkflowExecution)
        .where(
            WorkflowExecution.id == execution_id,
            WorkflowExecution.status == ExecutionStatus.WAITING,
        )
        .values(status=ExecutionStatus.QUEUED, wake_at=None)
        .returning(WorkflowExecution.id)
    )
    return woken.first() is not None


async def wake_parent(database: Database, run: Run) -> bool:
    """A child execution ended: wake its parent (if it waits). Called after the child's end
    committed, so a parent that parks concurrently sees the end and does not park."""
    if run.parent_execution_id is None:
        return False
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            select(WorkflowExecution.id)
            .where(WorkflowExecution.id == run.parent_execution_id)
            .with_for_update()
        )
        return await wake(db, run.parent_execution_id)


async def wake_due(
    database: Database, *, limit: int = WAKE_BATCH
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Waiting executions whose time has come, across organizations, back to `queued`:
    (org id, execution id) of each, for the caller to resubmit. Rows another waker holds are
    skipped, so several workers may run this at once."""
    async with system_transaction(database) as db:
        rows = await db.execute(
            text(
                """
                update workflow_executions e set status = 'queued', wake_at = null
                from (select id from workflow_executions
                      where status = 'waiting' and wake_at <= now()
                      order by wake_at limit :limit
                      for update skip locked) due
                where e.id = due.id
                returning e.org_id, e.id
                """
            ),
            {"limit": limit},
        )
        return [(org_id, execution_id) for org_id, execution_id in rows]


async def wake_ready(
    database: Database, *, limit: int = WAKE_BATCH
) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """Waiting executions something already happened for (a decision, a child's end) whose
    wake-up was lost (its process died between the commit and the wake), back to `queued`.
    Scans the waiting executions: run it seldom (the reconciler's pace)."""
    async with system_transaction(database) as db:
        rows = await db.execute(
            text(  # built from constants only: no input reaches the text
                f"""
                update workflow_executions e set status = 'queued', wake_at = null
                from (select w.id from workflow_executions w
                      where w.status = 'waiting'
                        and ({_READY_SQL.replace(":execution", "w.id").strip()})
                      order by w.created_at limit :limit
                      for update skip locked) ready
                where e.id = ready.id
                returning e.org_id, e.id
                """  # noqa: S608  # noqa: S608
            ),
            {"limit": limit},
        )
        return [(org_id, execution_id) for org_id, execution_id in rows]
