"""An execution's BullMQ job follows its row, never runs ahead of it: the API and the web UI add,
replace or remove it only once the request's transaction has committed."""

from __future__ import annotations

from taskloom.auth.deps import RequestContext
from taskloom.executions.models import WorkflowExecution
from taskloom.executions.service import Cancellation


def queue_limit(ctx: RequestContext) -> int | None:
    """MAX_QUEUED_PER_ORG for the service to check with an exact count, or None when the fair
    scheduler's note from this process's last submission for the organization, a moment ago,
    says it is far below it (a flooding organization's requests then cost no count)."""
    limit = ctx.runtime.settings.max_queued_per_org
    org_id = ctx.principal.org_id
    if org_id is not None and ctx.runtime.queue.fair.surely_below(org_id, limit):
        return None
    return limit


def enqueue_after_commit(
    ctx: RequestContext, execution: WorkflowExecution, *, replace: bool
) -> None:
    """Submit the execution to the fair scheduler after the commit (for a retry, first drop
    its finished job); its job is added when the scheduler admits it, often at once."""
    queue, execution_id, org_id = ctx.runtime.queue, execution.id, execution.org_id
    request_id = ctx.audit.request_id  # this request's id (for a retry too: the retry's)

    async def enqueue() -> None:
        if replace:
            await queue.resubmit(execution_id=execution_id, org_id=org_id, request_id=request_id)
        else:
            await queue.submit(execution_id=execution_id, org_id=org_id, request_id=request_id)

    ctx.after_commit.append(enqueue)


def after_cancel_commit(ctx: RequestContext, cancellation: Cancellation) -> None:
    """After the commit: withdraw what the cancel stopped while queued or waiting (jobs,
    places in the scheduler), and resubmit the parent it woke."""
    queue = ctx.runtime.queue
    withdrawn, wake = list(cancellation.withdrawn), cancellation.wake
    org_id = cancellation.execution.org_id

    async def apply() -> None:
        for org, execution_id in withdrawn:
            await queue.withdraw(execution_id=execution_id, org_id=org)
        if wake is not None:
            await queue.resubmit(execution_id=wake, org_id=org_id)

    if withdrawn or wake is not None:
        ctx.after_commit.append(apply)
