"""/api/workflows/{id}/execute, /api/executions and /api/queue/failed. Viewers read; members
run, cancel and retry; admins see the queue's failed jobs. Jobs are submitted or withdrawn only
after the commit."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Bearer, Member, Viewer, ViewerReads, bearer_token
from taskloom.auth.read_lane import lane_of
from taskloom.executions import agent_turns, approvals, reruns, service, streams
from taskloom.executions.models import ExecutionStatus
from taskloom.executions.queue import (
    ExecutionQueue,
    after_cancel_commit,
    count_start_after_commit,
    enqueue_after_commit,
    queue_limit,
)
from taskloom.executions.schemas import (
    AgentTurnOut,
    AgentTurnsOut,
    ApprovalOut,
    DecisionRequest,
    ExecuteRequest,
    ExecutionAccepted,
    ExecutionDetail,
    ExecutionOut,
    ExecutionPage,
    FailedJobOut,
    ItemsProgress,
    RerunRequest,
    StepOut,
)
from taskloom.executions.service import StartKind
from taskloom.locations import located, set_location
from taskloom.timestamps import UtcDatetime
from taskloom.workflows.schemas import STEP_ID_PATTERN

# Tagged `workflows` as before the split: the OpenAPI document (and clients generated from it)
# group these operations with the workflow they run.
router = APIRouter(prefix="/api", tags=["workflows"])
StepId = Annotated[str, Path(pattern=STEP_ID_PATTERN, max_length=64)]
ItemIndex = Annotated[int, Path(ge=0, le=100_000)]


@router.post(
    "/workflows/{workflow_id}/execute",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("member"),
    responses={
        **located(202),
        200: {
            "model": ExecutionAccepted,
            "description": "An Idempotency-Key seen with the same input: the first execution",
            **located(200)[200],
        },
    },
)
async def execute_workflow(
    workflow_id: uuid.UUID,
    ctx: Member,
    response: Response,
    body: ExecuteRequest | None = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=service.IDEMPOTENCY_KEY_MAX,
            pattern=r"^[\x21-\x7e]+$",
            description="The same key and input within 24 h answer 200 with the first "
            "execution; the same key with another input is refused (422)",
        ),
    ] = None,
) -> ExecutionAccepted:
    started = await service.start_execution(
        db=ctx.db,
        org_id=ctx.principal.current_org(),
        workflow_id=workflow_id,
        input=(body or ExecuteRequest()).input,
        max_queued=queue_limit(ctx),
        origin=service.api_origin(ctx.principal, ctx.audit),
        idempotency_key=f"api:{idempotency_key}" if idempotency_key else None,
        idempotency_ttl_seconds=ctx.runtime.settings.idempotency_ttl_seconds,
    )
    execution = started.execution
    if started.created:
        enqueue_after_commit(ctx, execution, replace=False)
    else:
        response.status_code = status.HTTP_200_OK  # the first execution with this key
    count_start_after_commit(ctx, StartKind.API, started)
    set_location(response, f"/api/executions/{execution.id}")
    return ExecutionAccepted(execution_id=execution.id, status=execution.status)


@router.get("/executions", openapi_extra=access("viewer"))
async def list_executions(
    ctx: ViewerReads,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
    workflow_id: uuid.UUID | None = None,
    since: UtcDatetime | None = None,
    until: UtcDatetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
) -> ExecutionPage:
    one_call = not service.filtered(status_filter, workflow_id, since, until)
    async with ctx.calls() if one_call else ctx.reads() as reads:
        items, next_cursor = await service.list_executions(
            reads=reads,
            principal=ctx.principal,
            status=status_filter,
            workflow_id=workflow_id,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )
    return ExecutionPage(items=items, next_cursor=next_cursor)


def _list_arguments(query: list[tuple[str, str]]) -> dict[str, Any] | None:
    """The lane takes `limit` (plain digits within bounds) and `cursor`, each once; filters
    and anything else go to the route, which also refuses what is malformed."""
    arguments: dict[str, Any] = {}
    for name, value in query:
        if name in arguments or name not in ("limit", "cursor"):
            return None
        if name == "cursor":
            arguments["cursor"] = value
            continue
        if not (value.isascii() and value.isdigit() and len(value) <= 4):
            return None
        arguments["limit"] = int(value)
        if not 1 <= arguments["limit"] <= service.MAX_PAGE:
            return None
    return arguments


# Its usual request (a page, no filters) is answered without FastAPI's machinery
# (auth/read_lane.py).
LIST_LANE = lane_of(router, list_executions, _list_arguments)


@router.get("/executions/{execution_id}", openapi_extra=access("viewer"))
async def get_execution(execution_id: uuid.UUID, ctx: Viewer) -> ExecutionDetail:
    execution, steps = await service.get_execution(db=ctx.db, execution_id=execution_id)
    progress = await service.items_progress(db=ctx.db, execution=execution)
    asked = await approvals.list_for_execution(db=ctx.db, execution=execution)
    return ExecutionDetail(
        **ExecutionOut.model_validate(execution).model_dump(),
        steps=[
            StepOut.model_validate(s).model_copy(
                update={"items": ItemsProgress(**progress[s.step_id])}
                if s.step_id in progress
                else {}
            )
            for s in steps
        ],
        approvals=[ApprovalOut.model_validate(a) for a in asked],
        reruns=[r.id for r in await reruns.list_reruns(db=ctx.db, execution=execution)],
    )


@router.get("/executions/{execution_id}/steps/{step_id}/turns", openapi_extra=access("viewer"))
async def get_agent_turns(execution_id: uuid.UUID, step_id: StepId, ctx: Viewer) -> AgentTurnsOut:
    """An `agent` step's conversation: each model turn and each tool call, in order."""
    rows = await service.agent_step_turns(db=ctx.db, execution_id=execution_id, step_id=step_id)
    return AgentTurnsOut(
        execution_id=execution_id,
        step_id=step_id,
        turns=[AgentTurnOut(**agent_turns.as_json(row)) for row in rows],
    )


@router.get(
    "/executions/{execution_id}/events",
    openapi_extra=access("viewer"),
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-Sent Events: `step`, `execution` (the last), `agent.turn`, "
            "`agent.tool_call`, `token` (docs/WORKFLOWS.md, Live events)",
        }
    },
)
async def execution_events(
    execution_id: uuid.UUID,
    request: Request,
    bearer: Bearer,
    last_event_id: Annotated[
        str | None,
        Header(alias="Last-Event-ID", max_length=64, description="Resume after this event"),
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(alias="last_event_id", max_length=64, description="As Last-Event-ID"),
    ] = None,
) -> Response:
    """The execution's live events; closes when it ends. Authorized as GET
    /api/executions/{id}, again at least every minute; at most 5 open per person (429)."""
    token = bearer_token(bearer)

    async def authorize() -> streams.Access:
        return await streams.execution_access(request, token, execution_id)

    return await streams.open_stream(
        request, execution_id, authorize, last_event_id or last_event_id_query
    )


@router.get("/approvals", openapi_extra=access("viewer"))
async def list_approvals(ctx: Viewer) -> list[ApprovalOut]:
    """The organization's approvals that wait for a decision, oldest first (at most 200)."""
    pending = await approvals.list_pending(db=ctx.db, principal=ctx.principal)
    return [ApprovalOut.model_validate(a) for a in pending]


async def _decide(
    ctx: Viewer,
    execution_id: uuid.UUID,
    step_id: str,
    item_index: int | None,
    body: DecisionRequest | None,
    *,
    approve: bool,
) -> ApprovalOut:
    decided = await approvals.decide(
        db=ctx.db,
        principal=ctx.principal,
        context=ctx.audit,
        execution_id=execution_id,
        step_id=step_id,
        item_index=item_index,
        approve=approve,
        comment=body.comment if body else None,
    )
    if decided.woken:
        enqueue_after_commit(ctx, decided.execution, replace=True)
    return ApprovalOut.model_validate(decided.approval)


_DECIDE: dict[str, Any] = {"openapi_extra": access("viewer")}  # approvers only: 403 else


@router.post("/executions/{execution_id}/steps/{step_id}/approve", **_DECIDE)
async def approve_step(
    execution_id: uuid.UUID, step_id: StepId, ctx: Viewer, body: DecisionRequest | None = None
) -> ApprovalOut:
    """Approve what an `approval` step asks; the execution goes on."""
    return await _decide(ctx, execution_id, step_id, None, body, approve=True)


@router.post("/executions/{execution_id}/steps/{step_id}/reject", **_DECIDE)
async def reject_step(
    execution_id: uuid.UUID, step_id: StepId, ctx: Viewer, body: DecisionRequest | None = None
) -> ApprovalOut:
    """Reject it: the step's output says `approved: false`, the execution goes on."""
    return await _decide(ctx, execution_id, step_id, None, body, approve=False)


@router.post("/executions/{execution_id}/steps/{step_id}/items/{index}/approve", **_DECIDE)
async def approve_item(
    execution_id: uuid.UUID,
    step_id: StepId,
    index: ItemIndex,
    ctx: Viewer,
    body: DecisionRequest | None = None,
) -> ApprovalOut:
    """Approve one item of an approval inside a for_each."""
    return await _decide(ctx, execution_id, step_id, index, body, approve=True)


@router.post("/executions/{execution_id}/steps/{step_id}/items/{index}/reject", **_DECIDE)
async def reject_item(
    execution_id: uuid.UUID,
    step_id: StepId,
    index: ItemIndex,
    ctx: Viewer,
    body: DecisionRequest | None = None,
) -> ApprovalOut:
    """Reject one item of an approval inside a for_each."""
    return await _decide(ctx, execution_id, step_id, index, body, approve=False)


@router.post("/executions/{execution_id}/cancel", openapi_extra=access("member"))
async def cancel_execution(execution_id: uuid.UUID, ctx: Member) -> ExecutionOut:
    cancellation = await service.cancel_execution(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, execution_id=execution_id
    )
    after_cancel_commit(ctx, cancellation)
    return ExecutionOut.model_validate(cancellation.execution)


@router.post(
    "/executions/{execution_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("member"),
    responses=located(202),
)
async def retry_execution(
    execution_id: uuid.UUID, ctx: Member, response: Response, body: RerunRequest | None = None
) -> ExecutionOut:
    """Without a body: queue the failed or cancelled execution again; it resumes at its first
    unfinished step. With a body: re-run the finished execution as a new one (`retry_of`),
    the steps upstream of `from_step` keeping their recorded outputs (docs/WORKFLOWS.md)."""
    if body is None:
        execution = await service.retry_execution(
            db=ctx.db,
            principal=ctx.principal,
            context=ctx.audit,
            execution_id=execution_id,
            max_queued=queue_limit(ctx),
        )
    else:
        execution = await reruns.rerun_execution(
            db=ctx.db,
            principal=ctx.principal,
            context=ctx.audit,
            execution_id=execution_id,
            rerun=reruns.Rerun(reruns.Definition(body.definition), body.from_step),
            max_queued=queue_limit(ctx),
        )
        count_start_after_commit(ctx, StartKind.RETRY, service.Started(execution))
    enqueue_after_commit(ctx, execution, replace=body is None)
    set_location(response, f"/api/executions/{execution.id}")
    return ExecutionOut.model_validate(execution)


@router.get("/queue/failed", openapi_extra=access("admin"))
async def failed_jobs(
    ctx: Admin, limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50
) -> list[FailedJobOut]:
    """Failed executions of this organization with what BullMQ recorded about their jobs.
    Retry one with POST /api/executions/{id}/retry."""
    out: list[FailedJobOut] = []
    queue = ExecutionQueue(ctx.runtime)
    for execution in await service.failed_executions(
        db=ctx.db, principal=ctx.principal, limit=limit
    ):
        job = await queue.job(execution.id)
        out.append(
            FailedJobOut(
                execution_id=execution.id,
                workflow_id=execution.workflow_id,
                error=execution.error,
                finished_at=execution.finished_at,
                job_state=await queue.state(execution.id) if job else "unknown",
                failed_reason=job.failedReason if job else None,
                attempts_made=job.attemptsMade if job else None,
            )
        )
    return out
