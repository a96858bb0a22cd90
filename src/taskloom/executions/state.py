"""The state of one execution as a worker drives it. Each function is one short transaction in
the execution's tenant, so a step's result is durable the moment the step is done and a job
that runs again (after a crash, a hand-back or a retry) resumes at the first unfinished step.

    queued ──claim──▶ running ──▶ succeeded | failed | cancelled
       ▲                 │
       └── retry wait, hand-back on shutdown ──┘
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.db.engine import Database
from taskloom.db.tenancy import tenant_transaction
from taskloom.executions.models import (
    ExecutionStatus,
    ExecutionStep,
    StepStatus,
    WorkflowExecution,
)

TERMINAL = frozenset({ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED})
_SECRET_KEY = re.compile(r"authorization|token|secret|password|passwd|api[-_]?key|cookie", re.I)


class Claim(enum.Enum):
    RUN = "run"
    GONE = "gone"  # deleted with its workflow
    FINISHED = "finished"  # already terminal: acknowledge without running anything
    CANCELLED = "cancelled"  # cancel was requested before it started
    DEFER = "defer"  # the organization is at MAX_RUNNING_PER_ORG


@dataclass(frozen=True)
class Run:
    """What a worker needs to run (or resume) an execution."""

    execution_id: uuid.UUID
    org_id: uuid.UUID
    definition: dict[str, Any]
    input: dict[str, Any]
    done: dict[str, Any]  # outputs of steps that already succeeded, by step id
    attempts: dict[str, int]  # how often each step has started
    # The first unfinished step was marked running by the claim itself (one transaction fewer).
    first_attempt: int | None = None
    triggered_by: uuid.UUID | None = None


async def claim(
    database: Database, *, execution_id: uuid.UUID, org_id: uuid.UUID, max_running: int
) -> tuple[Claim, Run | None]:
    """Mark the execution running if its organization has a free slot. The per-org advisory lock
    makes count-then-update atomic across workers."""
    async with tenant_transaction(database, org_id=org_id, user_id=None) as db:
        await db.execute(
            text(
                "select pg_advisory_xact_lock(hashtextextended('taskloom.org_slots:' || :org, 0))"
            ),
            {"org": str(org_id)},
        )
        execution = (
            await db.execute(
                select(WorkflowExecution)
                .where(WorkflowExecution.id == execution_id)
                .with_for_update()
            )
        ).scalar_one_or_none()
        if execution is None:
            return Claim.GONE, None
        if execution.status in TERMINAL:
            return Claim.FINISHED, None
        if execution.cancel_requested_at is not None:
            _finish(execution, ExecutionStatus.CANCELLED)
            return Claim.CANCELLED, None
        if execution.status != ExecutionStatus.RUNNING:
            running = (
                await db.execute(
                    select(func.count())
                    .select_from(WorkflowExecution)
                    .where(
                        WorkflowExecution.org_id == org_id,
                        WorkflowExecution.status == ExecutionStatus.RUNNING,
                    )
                )
            ).scalar_one()
            if running >= max_running:
                return Claim.DEFER, None
        execution.status = ExecutionStatus.RUNNING
        execution.started_at = execution.started_at or func.now()
        execution.attempts += 1
        steps = (
            await db.execute(
                select(ExecutionStep).where(ExecutionStep.execution_id == execution_id)
            )
        ).scalars()
        done, attempts = {}, {}
        for step in steps:
            attempts[step.step_id] = step.attempts
            if step.status == StepStatus.SUCCEEDED:
                done[step.step_id] = step.output
        first_attempt = None
        for position, step_def in enumerate(execution.definition.get("steps", [])):
            if step_def["id"] not in done:
                first_attempt = await _start_step(
                    db,
                    org_id,
                    execution_id,
                    step_id=step_def["id"],
                    position=position,
                    type_=step_def["type"],
                )
                break
        return Claim.RUN, Run(
            execution_id=execution.id,
            org_id=org_id,
            definition=execution.definition,
            input=execution.input,
            done=done,
            attempts=attempts,
            first_attempt=first_attempt,
            triggered_by=execution.triggered_by,
        )


async def cancel_requested(database: Database, run: Run) -> bool:
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        requested = await db.scalar(
            select(WorkflowExecution.cancel_requested_at).where(
                WorkflowExecution.id == run.execution_id
            )
        )
    return requested is not None


async def start_step(
    database: Database, run: Run, *, step_id: str, position: int, type_: str
) -> int:
    """Record that the step starts; returns its attempt number (1 the first time)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        return await _start_step(
            db, run.org_id, run.execution_id, step_id=step_id, position=position, type_=type_
        )


async def _start_step(
    db: AsyncSession,
    org_id: uuid.UUID,
    execution_id: uuid.UUID,
    *,
    step_id: str,
    position: int,
    type_: str,
) -> int:
    statement = insert(ExecutionStep).values(
        org_id=org_id,
        execution_id=execution_id,
        step_id=step_id,
        position=position,
        type=type_,
        status=StepStatus.RUNNING,
        attempts=1,
        started_at=func.now(),
    )
    upsert = statement.on_conflict_do_update(
        index_elements=["execution_id", "step_id"],
        set_={
            "status": StepStatus.RUNNING,
            "attempts": ExecutionStep.attempts + 1,
            "started_at": func.now(),
            "finished_at": None,
            "error": None,
        },
    ).returning(ExecutionStep.attempts)
    attempt: int = (await db.execute(upsert)).scalar_one()
    return attempt


async def step_succeeded(
    database: Database, run: Run, *, step_id: str, args: Any, output: Any, last: bool = False
) -> None:
    """Commit the step's output; for the last step, the execution's success in the same
    transaction (one round trip fewer per execution)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            update(ExecutionStep)
            .where(ExecutionStep.execution_id == run.execution_id, ExecutionStep.step_id == step_id)
            .values(
                status=StepStatus.SUCCEEDED,
                input=redact(args),
                output=output,
                finished_at=func.now(),
            )
        )
        if last:
            await db.execute(
                update(WorkflowExecution)
                .where(
                    WorkflowExecution.id == run.execution_id,
                    WorkflowExecution.status == ExecutionStatus.RUNNING,
                )
                .values(
                    status=ExecutionStatus.SUCCEEDED,
                    output=output,
                    error=None,
                    finished_at=func.now(),
                )
            )


async def step_failed(
    database: Database, run: Run, *, step_id: str, error: dict[str, Any], final: bool, args: Any
) -> None:
    """A failed attempt: `final` marks the step failed; otherwise it waits for the retry."""
    await _update_step(
        database,
        run,
        step_id,
        status=StepStatus.FAILED if final else StepStatus.PENDING,
        input=redact(args) if args is not None else None,
        error=error,
        finished_at=func.now() if final else None,
    )


async def step_interrupted(database: Database, run: Run, *, step_id: str) -> None:
    """The worker is shutting down mid-step: the step runs again from the start elsewhere. Only
    a step still running is reset: one whose success committed just before the interruption
    stays done."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            update(ExecutionStep)
            .where(
                ExecutionStep.execution_id == run.execution_id,
                ExecutionStep.step_id == step_id,
                ExecutionStep.status == StepStatus.RUNNING,
            )
            .values(status=StepStatus.PENDING)
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
        _finish(execution, status, output=output, error=error)


async def back_to_queue(
    database: Database, run: Run, *, error: dict[str, Any] | None = None
) -> None:
    """Waiting for a retry or handed back: queued again, keeping what is done (never failed)."""
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        values: dict[str, Any] = {"status": ExecutionStatus.QUEUED}
        if error is not None:
            values["error"] = error
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


async def _update_step(database: Database, run: Run, step_id: str, **values: Any) -> None:
    async with tenant_transaction(database, org_id=run.org_id, user_id=None) as db:
        await db.execute(
            update(ExecutionStep)
            .where(ExecutionStep.execution_id == run.execution_id, ExecutionStep.step_id == step_id)
            .values(**values)
        )
