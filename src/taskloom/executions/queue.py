"""The `orchestration` queue as executions see it: one job per execution, whose job id is the
execution id, so enqueueing twice is a no-op and the two can always be matched. Executions
reach it through the fair scheduler (queue/fairness.py): `submit` puts one in its
organization's ready list, and the jobs of whatever the scheduler admits are added here.

An execution's job follows its row, never runs ahead of it: the API and the web UI submit,
resubmit or withdraw it only once the request's transaction has committed (the `*_after_commit`
helpers below)."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from bullmq import Job
from opentelemetry.trace import SpanKind

from taskloom.auth.deps import RequestContext
from taskloom.config import Settings
from taskloom.executions.inline import JOB_INPUT_KEY
from taskloom.executions.models import WorkflowExecution
from taskloom.executions.service import Cancellation, Started, StartKind
from taskloom.observability import tracing
from taskloom.observability.metrics import TRIGGERS
from taskloom.queue.fairness import Admitted
from taskloom.queue.jobs import QueueSpec
from taskloom.runtime import Runtime

QUEUE_NAME = "orchestration"


def _retries(settings: Settings) -> dict[str, Any]:
    return {
        "attempts": settings.execution_max_attempts,
        "backoff": {"type": "exponential", "delay": settings.execution_backoff_ms},
    }


QUEUE = QueueSpec(
    name=QUEUE_NAME,
    job_name="execute",
    purpose="producer",
    retries=_retries,
    health=True,
    dropped_when_done_with=JOB_INPUT_KEY,
)


class ExecutionQueue:
    """The executions' binding of the host's `orchestration` queue and fair scheduler (both
    opened once per process, in the runtime); cheap to make wherever it is needed."""

    def __init__(self, runtime: Runtime) -> None:
        self.jobs = runtime.queues[QUEUE_NAME]
        self.fair = runtime.fair

    @staticmethod
    def job_data(
        execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None
    ) -> dict[str, Any]:
        """`request_id` (the API request's X-Request-ID) follows the job into the worker's logs
        and HTTP calls; the current trace context makes the worker's spans join the request's
        trace."""
        data: dict[str, Any] = {"execution_id": str(execution_id), "org_id": str(org_id)}
        if request_id:
            data["request_id"] = request_id
        if trace_context := tracing.current_context_carrier():
            data["trace"] = trace_context
        return data

    async def submit(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """An execution is ready to run (its row is committed `queued`): put it in its
        organization's ready list and add the jobs of what the scheduler admits (often it)."""
        with self._sending(execution_id):  # the job data carries this span's context
            data = self.job_data(execution_id, org_id, request_id)
            admitted = await self.fair.accept(org_id=org_id, execution_id=execution_id, data=data)
            await self.add(admitted)

    def job_data_sent(
        self, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None
    ) -> dict[str, Any]:
        """`job_data` made under the job's producer span in the caller's own context, for a
        submission sent later with others' (`submit_many`)."""
        with self._sending(execution_id):
            return self.job_data(execution_id, org_id, request_id)

    async def submit_many(
        self, submitted: list[tuple[uuid.UUID, uuid.UUID, dict[str, Any]]]
    ) -> None:
        """`submit` for several (org, execution, job data) at once: one script call, one add."""
        await self.add(await self.fair.accept_many(submitted))

    async def finished(self, *, execution_id: uuid.UUID, org_id: uuid.UUID) -> None:
        """The execution is done with the queue (finished, or withdrawn): free its
        organization's slot and add the jobs of what the scheduler admits in its place."""
        await self.finished_many([(org_id, execution_id)])

    async def finished_many(self, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """`finished` for several (org, execution) at once: one script call, one add."""
        await self.add(await self.fair.release(*pairs))

    async def add(self, admitted: list[Admitted]) -> None:
        """Add the jobs of admitted executions (one round trip however many)."""
        await self.jobs.add_bulk(
            [
                (
                    str(a.execution_id),
                    {**a.data, "execution_id": str(a.execution_id), "org_id": str(a.org_id)},
                )
                for a in admitted
            ]
        )

    async def register_worker(self, *, worker: str, slots: int, ttl_seconds: float) -> None:
        """A live worker's slots count towards what may be admitted (renewed by its heartbeat,
        which also adds the jobs of anything admitted thanks to it)."""
        await self.add(
            await self.fair.register(worker=worker, slots=slots, ttl_seconds=ttl_seconds)
        )

    async def deregister_worker(self, *, worker: str) -> None:
        await self.fair.deregister(worker=worker)

    async def enqueue(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """Add the job of an execution that is already admitted (a no-op while a job with its
        id exists); everything else goes through `submit`."""
        with self._sending(execution_id):
            data = self.job_data(execution_id, org_id, request_id)
            await self.jobs.add(data, job_id=str(execution_id))

    @staticmethod
    def _sending(execution_id: uuid.UUID) -> Any:
        """The producer span of an execution's job (none unless tracing is configured: even a
        no-op span costs the API a per cent or two of its CPU)."""
        if not tracing.enabled():
            return contextlib.nullcontext()
        return tracing.tracer().start_as_current_span(
            f"send {QUEUE_NAME}",
            kind=SpanKind.PRODUCER,
            attributes=tracing.messaging_attributes(
                queue=QUEUE_NAME, job_id=str(execution_id), operation="send"
            ),
        )

    async def replace(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """Drop a finished job of the admitted execution (if any) and add a fresh one."""
        await self.remove(execution_id)
        await self.enqueue(execution_id=execution_id, org_id=org_id, request_id=request_id)

    async def resubmit(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """A retry: drop the execution's finished job (a new one with its id would otherwise
        be a no-op) and submit it again."""
        await self.remove(execution_id)
        await self.submit(execution_id=execution_id, org_id=org_id, request_id=request_id)

    async def withdraw(self, *, execution_id: uuid.UUID, org_id: uuid.UUID) -> None:
        """A queued execution was cancelled: remove its job and its place in the scheduler."""
        await self.remove(execution_id)
        await self.finished(execution_id=execution_id, org_id=org_id)

    async def remove(self, execution_id: uuid.UUID) -> bool:
        """Remove the job unless a worker holds it (then the worker sees the execution's state)."""
        return await self.jobs.remove(str(execution_id))

    async def state(self, execution_id: uuid.UUID) -> str:
        """waiting, active, delayed, prioritized, completed, failed, or unknown (no such job)."""
        return await self.jobs.state(str(execution_id))

    async def job(self, execution_id: uuid.UUID) -> Job | None:
        return await self.jobs.job(str(execution_id))

    async def counts(self) -> dict[str, int]:
        return await self.jobs.counts()


def queue_limit(ctx: RequestContext) -> int | None:
    """`queue_limit_of` the request's organization."""
    return queue_limit_of(ctx.runtime, ctx.principal.org_id)


def queue_limit_of(runtime: Runtime, org_id: uuid.UUID | None) -> int | None:
    """MAX_QUEUED_PER_ORG for the service to check with an exact count, or None when the fair
    scheduler's note from this process's last submission for the organization, a moment ago,
    says it is far below it (a flooding organization's requests then cost no count)."""
    limit = runtime.settings.max_queued_per_org
    if org_id is not None and runtime.fair.surely_below(org_id, limit):
        return None
    return limit


def enqueue_after_commit(
    ctx: RequestContext, execution: WorkflowExecution, *, replace: bool
) -> None:
    """Submit the execution to the fair scheduler after the commit (for a retry, first drop
    its finished job); its job is added when the scheduler admits it, often at once."""
    queue, execution_id, org_id = ExecutionQueue(ctx.runtime), execution.id, execution.org_id
    request_id = ctx.audit.request_id  # this request's id (for a retry too: the retry's)

    async def enqueue() -> None:
        if replace:
            await queue.resubmit(execution_id=execution_id, org_id=org_id, request_id=request_id)
        else:
            await queue.submit(execution_id=execution_id, org_id=org_id, request_id=request_id)

    ctx.after_commit.append(enqueue)


def count_start_after_commit(ctx: RequestContext, kind: StartKind, started: Started) -> None:
    """Count the start in `workflow_triggers_total` once its transaction has committed."""

    async def count() -> None:
        count_start(kind, started)

    ctx.after_commit.append(count)


def count_start(kind: StartKind, started: Started) -> None:
    """A committed start in `workflow_triggers_total`."""
    TRIGGERS.labels(kind, "started" if started.created else "duplicate").inc()


def after_cancel_commit(ctx: RequestContext, cancellation: Cancellation) -> None:
    """After the commit: withdraw what the cancel stopped while queued or waiting (jobs,
    places in the scheduler), and resubmit the parent it woke."""
    queue = ExecutionQueue(ctx.runtime)
    withdrawn, wake = list(cancellation.withdrawn), cancellation.wake
    org_id = cancellation.execution.org_id

    async def apply() -> None:
        for org, execution_id in withdrawn:
            await queue.withdraw(execution_id=execution_id, org_id=org)
        if wake is not None:
            await queue.resubmit(execution_id=wake, org_id=org_id)

    if withdrawn or wake is not None:
        ctx.after_commit.append(apply)
