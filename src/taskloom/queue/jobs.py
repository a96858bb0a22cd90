"""The `orchestration` queue as the rest of Taskloom sees it: one job per execution, whose job
id is the execution id, so enqueueing twice is a no-op and the two can always be matched."""

from __future__ import annotations

import uuid
from typing import Any

from bullmq import Job, Queue

from taskloom.config import Settings
from taskloom.observability import tracing
from taskloom.redis import bullmq_options

QUEUE_NAME = "orchestration"
JOB_NAME = "execute"
# Finished jobs are kept a while for inspection; the execution rows are the record.
KEEP_COMPLETED = {"age": 3_600, "count": 10_000}
KEEP_FAILED = {"age": 14 * 86_400}
# BullMQ would keep each failed attempt's Python traceback, whose chained exceptions quote
# step errors that may echo a person's input; failure reasons are codes (queue/runner.py).
NO_STACKTRACE = {"stackTraceLimit": 0}


class ExecutionQueue:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.queue = Queue(QUEUE_NAME, bullmq_options(settings, purpose="producer"))

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

    async def enqueue(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """Add the execution's job (a no-op while a job with its id exists). `request_id` (the
        API request's X-Request-ID) follows the job into the worker's logs and HTTP calls."""
        data: dict[str, Any] = {"execution_id": str(execution_id), "org_id": str(org_id)}
        if request_id:
            data["request_id"] = request_id
        if trace_context := tracing.current_context_carrier():
            data["trace"] = trace_context  # the worker's spans join the request's trace
        await self.queue.add(JOB_NAME, data, self.job_options(execution_id))

    async def replace(
        self, *, execution_id: uuid.UUID, org_id: uuid.UUID, request_id: str | None = None
    ) -> None:
        """Drop a finished job of the execution (if any) and enqueue a fresh one (retries)."""
        await self.remove(execution_id)
        await self.enqueue(execution_id=execution_id, org_id=org_id, request_id=request_id)

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
