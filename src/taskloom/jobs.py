"""Every job type and periodic upkeep the domains plug into the worker host (queue/), listed
one floor above the domains so that the host imports none of them (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from taskloom.ai import budget
from taskloom.executions import reconciler, retention, runner, waker
from taskloom.gdpr import archive
from taskloom.queue.host import JobType, Upkeep
from taskloom.queue.jobs import QueueSpec
from taskloom.queue.worker import WorkerService
from taskloom.runtime import Runtime
from taskloom.triggers import events, ticker
from taskloom.webhooks import delivery
from taskloom.workflows import retention as workflow_retention

JOB_TYPES: tuple[JobType, ...] = (runner.JOB_TYPE, archive.JOB_TYPE, delivery.JOB_TYPE)
QUEUES: tuple[QueueSpec, ...] = tuple(job_type.queue for job_type in JOB_TYPES)

# Leader-only upkeep runs in this order on each tick of the leader (RECONCILE_INTERVAL_SECONDS).
UPKEEPS: tuple[Upkeep, ...] = (
    reconciler.UPKEEP,
    waker.WAKE_LOST,
    archive.EXPORT_PURGE,
    retention.UPKEEP,
    workflow_retention.UPKEEP,  # at most once a minute (SCAN_EVERY_SECONDS)
    delivery.LOST_DELIVERIES,
    budget.ABANDONED_RESERVATIONS,
    delivery.DISPATCH,
    waker.WAKE_DUE,  # every worker, every WAKE_INTERVAL_SECONDS
    events.EVENT_TRIGGERS,  # every worker, every WAKE_INTERVAL_SECONDS
    ticker.UPKEEP,  # every worker, every SCHEDULE_INTERVAL_SECONDS
)


def worker_service(runtime: Runtime, *, name: str | None = None) -> WorkerService:
    """A worker running every job type and upkeep above."""
    return WorkerService(runtime, job_types=JOB_TYPES, upkeeps=UPKEEPS, name=name)
