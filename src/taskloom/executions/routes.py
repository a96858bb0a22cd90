"""/api/workflows/{id}/execute, /api/executions and /api/queue/failed. Viewers read; members
run, cancel and retry; admins see the queue's failed jobs. Jobs are submitted or withdrawn only
after the commit."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Member, Viewer
from taskloom.executions import service
from taskloom.executions.models import ExecutionStatus
from taskloom.executions.queue import enqueue_after_commit, queue_limit, remove_job_after_commit
from taskloom.executions.schemas import (
    ExecuteRequest,
    ExecutionAccepted,
    ExecutionDetail,
    ExecutionOut,
    ExecutionPage,
    FailedJobOut,
    StepOut,
)
from taskloom.locations import located, set_location
from taskloom.timestamps import UtcDatetime

# Tagged `workflows` as before the split: the OpenAPI document (and clients generated from it)
# group these operations with the workflow they run.
router = APIRouter(prefix="/api", tags=["workflows"])


@router.post(
    "/workflows/{workflow_id}/execute",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("member"),
    responses=located(202),
)
async def execute_workflow(
    workflow_id: uuid.UUID, ctx: Member, response: Response, body: ExecuteRequest | None = None
) -> ExecutionAccepted:
    execution = await service.start_execution(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        workflow_id=workflow_id,
        input=(body or ExecuteRequest()).input,
        max_queued=queue_limit(ctx),
    )
    enqueue_after_commit(ctx, execution, replace=False)
    set_location(response, f"/api/executions/{execution.id}")
    return ExecutionAccepted(execution_id=execution.id, status=execution.status)


@router.get("/executions", openapi_extra=access("viewer"))
async def list_executions(
    ctx: Viewer,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
    workflow_id: uuid.UUID | None = None,
    since: UtcDatetime | None = None,
    until: UtcDatetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
) -> ExecutionPage:
    items, next_cursor = await service.list_executions(
        db=ctx.db,
        principal=ctx.principal,
        status=status_filter,
        workflow_id=workflow_id,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    return ExecutionPage(
        items=[ExecutionOut.model_validate(e) for e in items], next_cursor=next_cursor
    )


@router.get("/executions/{execution_id}", openapi_extra=access("viewer"))
async def get_execution(execution_id: uuid.UUID, ctx: Viewer) -> ExecutionDetail:
    execution, steps = await service.get_execution(db=ctx.db, execution_id=execution_id)
    return ExecutionDetail(
        **ExecutionOut.model_validate(execution).model_dump(),
        steps=[StepOut.model_validate(s) for s in steps],
    )


@router.post("/executions/{execution_id}/cancel", openapi_extra=access("member"))
async def cancel_execution(execution_id: uuid.UUID, ctx: Member) -> ExecutionOut:
    execution = await service.cancel_execution(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, execution_id=execution_id
    )
    if execution.status == ExecutionStatus.CANCELLED:
        remove_job_after_commit(ctx, execution)
    return ExecutionOut.model_validate(execution)


@router.post(
    "/executions/{execution_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("member"),
    responses=located(202),
)
async def retry_execution(execution_id: uuid.UUID, ctx: Member, response: Response) -> ExecutionOut:
    execution = await service.retry_execution(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        execution_id=execution_id,
        max_queued=queue_limit(ctx),
    )
    enqueue_after_commit(ctx, execution, replace=True)
    set_location(response, f"/api/executions/{execution.id}")
    return ExecutionOut.model_validate(execution)


@router.get("/queue/failed", openapi_extra=access("admin"))
async def failed_jobs(
    ctx: Admin, limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50
) -> list[FailedJobOut]:
    """Failed executions of this organization with what BullMQ recorded about their jobs.
    Retry one with POST /api/executions/{id}/retry."""
    out = []
    for execution in await service.failed_executions(
        db=ctx.db, principal=ctx.principal, limit=limit
    ):
        job = await ctx.runtime.queue.job(execution.id)
        out.append(
            FailedJobOut(
                execution_id=execution.id,
                workflow_id=execution.workflow_id,
                error=execution.error,
                finished_at=execution.finished_at,
                job_state=await ctx.runtime.queue.state(execution.id) if job else "unknown",
                failed_reason=job.failedReason if job else None,
                attempts_made=job.attemptsMade if job else None,
            )
        )
    return out
