"""An execution's BullMQ job follows its row, never runs ahead of it: the API and the web UI add,
replace or remove it only once the request's transaction has committed."""

from __future__ import annotations

from taskloom.auth.deps import RequestContext
from taskloom.workflows.models import WorkflowExecution


def enqueue_after_commit(
    ctx: RequestContext, execution: WorkflowExecution, *, replace: bool
) -> None:
    """Add the execution's job (or replace a finished one, for a retry) after the commit."""
    queue, execution_id, org_id = ctx.runtime.queue, execution.id, execution.org_id
    request_id = ctx.audit.request_id  # this request's id (for a retry too: the retry's)

    async def enqueue() -> None:
        if replace:
            await queue.replace(execution_id=execution_id, org_id=org_id, request_id=request_id)
        else:
            await queue.enqueue(execution_id=execution_id, org_id=org_id, request_id=request_id)

    ctx.after_commit.append(enqueue)


def remove_job_after_commit(ctx: RequestContext, execution: WorkflowExecution) -> None:
    """Remove the job of an execution cancelled while queued, after the commit."""
    queue, job_id = ctx.runtime.queue, execution.id

    async def remove_job() -> None:
        await queue.remove(job_id)

    ctx.after_commit.append(remove_job)
