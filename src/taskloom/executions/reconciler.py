"""Keeps execution rows, the fair scheduler and BullMQ jobs from diverging. The executions'
leader-only upkeep (`UPKEEP`, run by one worker at a time, queue/upkeep.py) looks at executions
left queued or running longer than RECONCILE_GRACE_SECONDS, and at executions admitted by the fair
scheduler longer ago than that, and:

- no job, and the execution is admitted (a process died between the admission and
  `Queue.add`, or Redis lost the job) ⇒ add its job;
- no job and not in the scheduler at all (Redis lost its data, or the submission after the
  commit failed) ⇒ submit it again (its organization's ready list);
- no job but waiting in its ready list ⇒ nothing: it waits for its turn;
- a completed job (a retry whose new job never made it) ⇒ replace the job (if admitted) or
  drop it (so the job added on admission is not a no-op);
- a failed job (it stalled more than QUEUE_MAX_STALLED_COUNT, or failed outside any step) ⇒
  mark the execution failed with the job's reason and free its slot. Never re-enqueued
  automatically: a failure that repeats would loop forever; `POST /api/executions/{id}/retry`
  is one click away;
- admitted, but finished or deleted in PostgreSQL (its worker died before freeing the slot) ⇒
  free the slot.

Jobs waiting, delayed or active are left alone: BullMQ's stalled check recovers those.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypedDict

import structlog
from sqlalchemy import select, update

from taskloom.db.tenancy import system_transaction
from taskloom.executions.models import ExecutionStatus, WorkflowExecution
from taskloom.executions.queue import ExecutionQueue
from taskloom.queue.host import Upkeep
from taskloom.runtime import Runtime

log = structlog.get_logger("taskloom.queue")

BATCH = 500


_UNFINISHED = (ExecutionStatus.QUEUED, ExecutionStatus.RUNNING)


class _JobIds(TypedDict):
    execution_id: uuid.UUID
    org_id: uuid.UUID
    request_id: str | None


@dataclass(frozen=True)
class Candidate:
    """An execution read as queued or running for longer than the grace period."""

    execution_id: uuid.UUID
    org_id: uuid.UUID
    request_id: str | None

    def job_ids(self) -> _JobIds:
        return {
            "execution_id": self.execution_id,
            "org_id": self.org_id,
            "request_id": self.request_id,
        }


@dataclass
class ReconcileReport:
    enqueued: int = 0  # admitted without a job: job added
    resubmitted: int = 0  # lost by the scheduler: back in its ready list
    replaced: int = 0
    failed: int = 0
    released: int = 0  # admitted but finished: slot freed

    def __bool__(self) -> bool:
        return any(self.__dict__.values())


class Reconciler:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.queue = ExecutionQueue(runtime)

    def _cutoff(self) -> datetime:
        """Rows older than this have had time to reach their job (RECONCILE_GRACE_SECONDS)."""
        return datetime.now(UTC) - timedelta(seconds=self.runtime.settings.reconcile_grace_seconds)

    async def reconcile_once(self) -> ReconcileReport:
        """One pass. Runs on the privileged role: it looks across every organization."""
        cutoff = self._cutoff()
        async with system_transaction(self.runtime.database) as db:
            rows = (
                await db.execute(
                    select(
                        WorkflowExecution.id,
                        WorkflowExecution.org_id,
                        WorkflowExecution.request_id,
                    )
                    .where(
                        WorkflowExecution.status.in_(_UNFINISHED),
                        WorkflowExecution.created_at < cutoff,
                    )
                    .order_by(WorkflowExecution.created_at)
                    .limit(BATCH)
                )
            ).all()
        candidates = [Candidate(*row) for row in rows]
        report = await self.settle(candidates)
        await self.settle_admitted(
            int(cutoff.timestamp() * 1000), {c.execution_id for c in candidates}, report
        )
        return report

    async def settle(
        self, candidates: list[Candidate], report: ReconcileReport | None = None
    ) -> ReconcileReport:
        """Compare executions read as unfinished with their jobs. That read is a moment old: an
        execution that finished since leaves a completed job, or none once it is removed, just
        like an orphan. So the job states are read first and the executions whose job looks
        finished are read again after; a worker commits the execution before it completes the
        job, so one still unfinished then is a real orphan. Counts go into `report` when one is
        given (even one still all zero, which is falsy), else into a new one."""
        queue = self.queue
        report = report if report is not None else ReconcileReport()
        states = [(c, await queue.state(c.execution_id)) for c in candidates]
        orphaned = {c.execution_id for c, state in states if state in ("unknown", "completed")}
        unfinished = await self._still_unfinished(orphaned) if orphaned else set()
        orphans = [
            (c, state)
            for c, state in states
            if state in ("unknown", "completed") and c.execution_id in unfinished
        ]
        places = await queue.fair.placement([(c.org_id, c.execution_id) for c, _ in orphans])
        for (candidate, state), place in zip(orphans, places, strict=True):
            await self._settle_orphan(candidate, state, place, report)
        for candidate, state in states:
            if state == "failed":
                job = await queue.job(candidate.execution_id)
                reason = job.failedReason if job else "the job failed"
                await self._mark_failed(candidate.execution_id, reason)
                await queue.finished(execution_id=candidate.execution_id, org_id=candidate.org_id)
                report.failed += 1
        return report

    async def _settle_orphan(
        self, candidate: Candidate, state: str, place: str | None, report: ReconcileReport
    ) -> None:
        """An unfinished execution whose job is gone (`unknown`) or done (`completed`)."""
        queue = self.queue
        if place == "admitted":  # died between the admission and Queue.add, or Redis lost it
            if state == "unknown":
                await queue.enqueue(**candidate.job_ids())
                report.enqueued += 1
            else:
                await queue.replace(**candidate.job_ids())
                report.replaced += 1
            return
        if state == "completed":  # the job added on its admission must not be a no-op
            await queue.remove(candidate.execution_id)
        if place is None:  # the scheduler lost it too: back to its organization's ready list
            await queue.submit(**candidate.job_ids())
            report.resubmitted += 1

    async def settle_admitted(
        self, cutoff_ms: int, seen: set[uuid.UUID], report: ReconcileReport
    ) -> None:
        """Executions admitted before `cutoff_ms`: free the slots of those finished or deleted
        in PostgreSQL (their worker died before freeing it), settle the others' jobs like any
        orphan (those `seen` already were)."""
        admitted = await self.queue.fair.admitted_before(cutoff_ms, limit=BATCH)
        admitted = [(org, execution) for org, execution in admitted if execution not in seen]
        if not admitted:
            return
        async with system_transaction(self.runtime.database) as db:
            rows = (
                await db.execute(
                    select(
                        WorkflowExecution.id,
                        WorkflowExecution.org_id,
                        WorkflowExecution.request_id,
                        WorkflowExecution.status,
                    ).where(WorkflowExecution.id.in_([e for _, e in admitted]))
                )
            ).all()
        unfinished = {row[0]: Candidate(*row[:3]) for row in rows if row[3] in _UNFINISHED}
        for org_id, execution_id in admitted:
            if execution_id not in unfinished:
                await self.queue.finished(execution_id=execution_id, org_id=org_id)
                report.released += 1
        await self.settle(list(unfinished.values()), report)

    async def _still_unfinished(self, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        async with system_transaction(self.runtime.database) as db:
            found = await db.scalars(
                select(WorkflowExecution.id).where(
                    WorkflowExecution.id.in_(ids), WorkflowExecution.status.in_(_UNFINISHED)
                )
            )
            return set(found)

    async def _mark_failed(self, execution_id: uuid.UUID, reason: str) -> None:
        async with system_transaction(self.runtime.database) as db:
            await db.execute(
                update(WorkflowExecution)
                .where(
                    WorkflowExecution.id == execution_id,
                    WorkflowExecution.status.in_(_UNFINISHED),
                )
                .values(
                    status=ExecutionStatus.FAILED,
                    error={"code": "job_failed", "message": reason},
                    finished_at=datetime.now(UTC),
                )
            )
        log.warning("execution_failed_by_reconciler", execution_id=str(execution_id), reason=reason)


async def reconcile(runtime: Runtime) -> None:
    """One pass of the reconciler, logged when it repaired anything."""
    report = await Reconciler(runtime).reconcile_once()
    if report:
        log.warning("reconciled", **report.__dict__)


UPKEEP = Upkeep(name="reconcile_executions", run=reconcile)
