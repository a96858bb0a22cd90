"""The `orchestration` queue as the rest of Taskloom sees it: one job per execution, whose job
id is the execution id, so enqueueing twice is a no-op and the two can always be matched.
Executions reach it through the fair scheduler (queue/fairness.py): `submit` puts one in its
organization's ready list, and the jobs of whatever the scheduler admits are added here."""

from __future__ import annotations

import uuid
from typing import Any

from bullmq import Job, Queue
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from taskloom.config import Settings
from taskloom.observability import tracing
from taskloom.queue.fairness import Admitted, FairScheduler
from taskloom.redis import Keys, bullmq_options

QUEUE_NAME = "orchestration"
JOB_NAME = "execute"
# Finished jobs are kept a while for inspection; the execution rows are the record.
KEEP_COMPLETED = {"age": 3_600, "count": 10_000}
KEEP_FAILED = {"age": 14 * 86_400}
# BullMQ would keep each failed attempt's Python traceback, whose chained exceptions quote
# step errors that may echo a person's input; failure reasons are codes (executions/runner.py).
NO_STACKTRACE = {"stackTraceLimit": 0}


class ExecutionQueue:
    def __init__(self, settings: Settings, redis: Redis, keys: Keys) -> None:
        self.settings = settings
        self.queue = Queue(QUEUE_NAME, bullmq_options(settings, purpose="producer"))
        self.fair = FairScheduler(redis, keys, settings)

    def job_options(self, execution_id: uuid.UUID) -> dict[str, Any]:
        s = self.settings
        return {
            "jobId": str(execution_id),
            "attempts": s.execution_max_attempts,
            "backoff": {"type": "exponential", "delay": s.execution_backoff_ms},
            "removeOnComplete": KEEP_COMPLETED,
            "removeOnFail": KEEP_FAILED,
            **NO_STACKTRACE,
        }

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

    async def finished(self, *, execution_id: uuid.UUID, org_id: uuid.UUID) -> None:
        """The execution is done with the queue (finished, or withdrawn): free its
        organization's slot and add the jobs of what the scheduler admits in its place."""
        await self.finished_many([(org_id, execution_id)])

    async def finished_many(self, pairs: list[tuple[uuid.UUID, uuid.UUID]]) -> None:
        """`finished` for several (org, execution) at once: one script call, one add."""
        await self.add(await self.fair.release(*pairs))

    async def add(self, admitted: list[Admitted]) -> None:
        """Add the jobs of admitted executions (one round trip however many)."""
        jobs: list[dict[str, Any]] = [
            {
                "name": JOB_NAME,
                "data": {
                    **a.data,
                    "execution_id": str(a.execution_id),
                    "org_id": str(a.org_id),
                },
                "opts": self.job_options(a.execution_id),
            }
            for a in admitted
        ]
        if len(jobs) == 1:
            await self.queue.add(jobs[0]["name"], jobs[0]["data"], jobs[0]["opts"])
        elif jobs:
            await self.queue.addBulk(jobs)

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
            await self.queue.add(JOB_NAME, data, self.job_options(execution_id))

    @staticmethod
    def _sending(execution_id: uuid.UUID) -> Any:
        """The producer span of an execution's job (a no-op unless tracing is on)."""
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
        try:
            return bool(await self.queue.remove(str(execution_id)))
        except Exception:  # bullmq raises a plain Exception when the job is locked
            return False

    async def state(self, execution_id: uuid.UUID) -> str:
        """waiting, active, delayed, prioritized, completed, failed, or unknown (no such job)."""
        return str(await self.queue.getJobState(str(execution_id)))

    async def job(self, execution_id: uuid.UUID) -> Job | None:
        return await self.queue.getJob(str(execution_id))

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts()
        return {state: int(n) for state, n in counts.items()}

    async def close(self) -> None:
        await self.queue.close()


GDPR_QUEUE_NAME = "gdpr"


class GdprExportQueue:
    """Queued data exports (POST /api/user/data-export); job id = the request's id."""

    def __init__(self, settings: Settings) -> None:
        self.queue = Queue(GDPR_QUEUE_NAME, bullmq_options(settings, purpose="producer-gdpr"))

    async def enqueue(self, request_id: uuid.UUID) -> None:
        await self.queue.add(
            "export",
            {"request_id": str(request_id)},
            {
                "jobId": str(request_id),
                "attempts": 3,
                "backoff": {"type": "exponential", "delay": 5_000},
                "removeOnComplete": KEEP_COMPLETED,
                "removeOnFail": KEEP_FAILED,
                **NO_STACKTRACE,
            },
        )

    async def remove(self, request_id: uuid.UUID) -> bool:
        """Remove the export's job unless a worker holds it (that run then finds no request)."""
        try:
            return bool(await self.queue.remove(str(request_id)))
        except Exception:  # bullmq raises a plain Exception when the job is locked
            return False

    async def close(self) -> None:
        await self.queue.close()

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts()
        return {state: int(n) for state, n in counts.items()}


WEBHOOK_QUEUE_NAME = "webhooks"


class WebhookQueue:
    """One job per delivery (job id = the first attempt's row id, so enqueueing twice is a
    no-op); BullMQ retries failed attempts with exponential backoff."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = Queue(
            WEBHOOK_QUEUE_NAME, bullmq_options(settings, purpose="producer-webhooks")
        )

    async def enqueue(self, *, delivery_id: uuid.UUID, org_id: uuid.UUID) -> None:
        s = self.settings
        await self.queue.add(
            "deliver",
            {"delivery_id": str(delivery_id), "org_id": str(org_id)},
            {
                "jobId": str(delivery_id),
                "attempts": s.webhook_max_attempts,
                "backoff": {"type": "exponential", "delay": s.webhook_backoff_ms},
                "removeOnComplete": KEEP_COMPLETED,
                "removeOnFail": KEEP_FAILED,
                **NO_STACKTRACE,
            },
        )

    async def state(self, delivery_id: uuid.UUID) -> str:
        """waiting, active, delayed, completed, failed, or unknown (no such job)."""
        return str(await self.queue.getJobState(str(delivery_id)))

    async def counts(self) -> dict[str, int]:
        counts = await self.queue.getJobCounts()
        return {state: int(n) for state, n in counts.items()}

    async def close(self) -> None:
        await self.queue.close()
