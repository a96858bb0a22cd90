"""A job whose processing fails because PostgreSQL cannot be reached goes back to the queue
without using up an attempt.

An outage (a restart, a failover, no free connection) is not the job's fault: counted as failed
attempts, one longer than the backoff of every attempt would fail every job taken meanwhile.
Instead the job is delayed ~2 s, as often as needed; whatever it had committed stays, and the next
run resumes from there (executions: as after a crash; webhook deliveries: at least once).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from bullmq import DelayedError, Job

from taskloom.errors import unavailable_dependency
from taskloom.observability.metrics import QUEUE_EVENTS

log = structlog.get_logger("taskloom.queue")

OUTAGE_MS = 2_000  # try the job again after about this long


@asynccontextmanager
async def put_back_on_database_outage(job: Job, token: str, *, queue: str) -> AsyncIterator[None]:
    try:
        yield
    except Exception as error:
        if unavailable_dependency(error) != "PostgreSQL":
            raise
        QUEUE_EVENTS.labels("database_unavailable").inc()
        log.warning(
            "database_unavailable", queue=queue, error=type(error).__name__, retry_in_ms=OUTAGE_MS
        )
        delay = OUTAGE_MS + random.randint(0, OUTAGE_MS // 2)
        await job.moveToDelayed(int(time.time() * 1000) + delay, token)
        raise DelayedError() from None
