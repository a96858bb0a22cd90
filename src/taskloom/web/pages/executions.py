"""Executions: a filtered list and one execution with its steps (outputs, and the model,
tokens and cost of `ai` steps), its graph with for-each progress, the approvals it waits for
(with Approve / Reject for their approvers, posted to pages/approvals.py), and its parent and
child executions. Pages of unfinished executions reload themselves with
<meta http-equiv="refresh">, so the status is live without any script."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskloom.db.driver import session_connection
from taskloom.errors import BadRequest
from taskloom.executions import agent_turns, approvals, reruns, service, streams
from taskloom.executions.models import (
    ApprovalStatus,
    ExecutionStatus,
    ExecutionStep,
    WorkflowExecution,
)
from taskloom.executions.queue import (
    after_cancel_commit,
    count_start_after_commit,
    enqueue_after_commit,
    queue_limit,
)
from taskloom.executions.schemas import COMMENT_MAX_LENGTH
from taskloom.orgs.models import Role
from taskloom.web import forms
from taskloom.web.errors import UiRoute
from taskloom.web.graph import StepView, render_graph, render_timeline
from taskloom.web.pages.approvals import approval_views
from taskloom.web.rendering import TERMINAL, redirect, render, with_query
from taskloom.web.session import Page, signed_in, with_access_token
from taskloom.workflows import service as workflow_service
from taskloom.workflows.graph import Graph

router = APIRouter(prefix="/ui/executions", route_class=UiRoute, include_in_schema=False)

REFRESH_SECONDS = 2
PAGE_SIZE = 25


def _status(value: str | None) -> ExecutionStatus | None:
    if not value:
        return None
    try:
        return ExecutionStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in ExecutionStatus)
        raise BadRequest(f"unknown status {value!r}; choose one of {valid}") from None


def _workflow_id(value: str | None) -> uuid.UUID | None:
    if not value:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise BadRequest("unknown workflow") from None


@router.get("")
async def list_executions(
    request: Request,
    status: Annotated[str | None, Query(max_length=32)] = None,
    workflow_id: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        wanted_status, wanted_workflow = _status(status), _workflow_id(workflow_id)
        items, next_cursor = await service.list_executions(
            reads=await session_connection(page.db),
            principal=page.principal,
            status=wanted_status,
            workflow_id=wanted_workflow,
            cursor=cursor,
            limit=PAGE_SIZE,
        )
        workflows = await workflow_service.list_workflows(
            reads=await session_connection(page.db), principal=page.principal
        )
        names = {w.id: w.name for w in workflows}
        live = any(e.status not in TERMINAL for e in items)
        next_url = with_query(request, cursor=next_cursor) if next_cursor else None
        return render(
            page,
            "executions/list.html",
            title="Executions",
            executions=items,
            workflows=workflows,
            names=names,
            status_filter=wanted_status.value if wanted_status else "",
            workflow_id=str(wanted_workflow) if wanted_workflow else "",
            statuses=[s.value for s in ExecutionStatus],
            next_url=next_url,
            refresh_seconds=REFRESH_SECONDS if live and not cursor else None,
        )


def ai_usage(step: ExecutionStep) -> dict[str, Any] | None:
    """Model, tokens and cost of an `ai` step's call (what the step recorded in its output)."""
    if step.type != "ai" or not isinstance(step.output, dict):
        return None
    usage = step.output.get("usage")
    if not isinstance(usage, dict):
        return None
    return {
        "model": step.output.get("model"),
        "provider": step.output.get("provider"),
        "downgraded_from": step.output.get("downgraded_from"),
        "input_tokens": usage.get("input_tokens"),
        "output_tokens": usage.get("output_tokens"),
        "cost_usd": usage.get("cost_usd"),
    }


def step_views(
    steps: list[ExecutionStep], progress: Mapping[str, Mapping[str, int]] | None = None
) -> dict[str, StepView]:
    """Each step's status and times for the drawings, from its execution_steps row, and a
    for_each step's items finished (succeeded or failed) of its total (`items_progress`)."""
    views = {}
    for step in steps:
        items = (progress or {}).get(step.step_id)
        views[step.step_id] = StepView(
            status=str(step.status),
            done=items["succeeded"] + items["failed"] if items else None,
            total=items["total"] if items else None,
            started_at=step.started_at,
            finished_at=step.finished_at,
        )
    return views


@router.get("/{execution_id}")
async def show_execution(execution_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        execution, steps = await service.get_execution(db=page.db, execution_id=execution_id)
        workflow = await workflow_service.get_workflow(
            db=page.db, workflow_id=execution.workflow_id
        )
        usage = {step.step_id: ai_usage(step) for step in steps}
        conversations = {
            step.step_id: await agent_turns.step_records(
                page.db, execution_id=execution.id, step_id=step.step_id
            )
            for step in steps
            if step.type == "agent"
        }
        planned = [s.get("id") for s in (execution.definition or {}).get("steps", [])]
        graph = Graph.of(execution.definition or {})
        progress = await service.items_progress(db=page.db, execution=execution)
        views = step_views(steps, progress)
        asked = await approval_views(
            page, await approvals.list_for_execution(db=page.db, execution=execution)
        )
        deciding = any(view.may_decide for view in asked)
        return render(
            page,
            "executions/detail.html",
            title=f"Execution of {workflow.name}",
            execution=execution,
            workflow=workflow,
            steps=steps,
            usage=usage,
            conversations=conversations,
            not_started=[p for p in planned if p not in {s.step_id for s in steps}],
            progress=progress,
            pending=[view for view in asked if view.approval.status == ApprovalStatus.PENDING],
            decided=[view for view in asked if view.approval.status != ApprovalStatus.PENDING],
            comment_max=COMMENT_MAX_LENGTH,
            parent=await _parent(page, execution),
            retry_of=execution.retry_of,
            reruns=await reruns.list_reruns(db=page.db, execution=execution),
            step_ids=graph.order,
            children=await service.list_children(db=page.db, execution=execution),
            children_shown=service.CHILDREN_SHOWN,
            graph_svg=render_graph(graph, views),
            timeline_svg=render_timeline(graph, views)
            if any(v.started_at for v in views.values())
            else None,
            # Not while a decision form is on the page: a reload would wipe a comment typed.
            refresh_seconds=None if execution.status in TERMINAL or deciding else REFRESH_SECONDS,
            # With JavaScript, static/execution.js follows the live events instead of reloading.
            live_events=execution.status not in TERMINAL,
            live_refresh_seconds=REFRESH_SECONDS,
        )


@router.get("/{execution_id}/events")
async def execution_events(
    execution_id: uuid.UUID,
    request: Request,
    last_event_id: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """The execution's live events for the page's script (static/execution.js), with the
    cookie session: EventSource cannot send an Authorization header. Authorized as the page
    is, and as GET /api/executions/{id}; the stream itself is executions/streams.py's."""

    async def opened(token: str) -> Response:
        async def authorize() -> streams.Access:
            return await streams.execution_access(request, token, execution_id)

        resume = request.headers.get("last-event-id") or last_event_id
        return await streams.open_stream(request, execution_id, authorize, resume)

    return await with_access_token(request, opened)


async def _parent(page: Page, execution: WorkflowExecution) -> WorkflowExecution | None:
    """The execution whose `workflow` step started this one, if any."""
    if execution.parent_execution_id is None:
        return None
    parent, _ = await service.get_execution(db=page.db, execution_id=execution.parent_execution_id)
    return parent


@router.post("/{execution_id}/cancel")
async def cancel_execution(execution_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.MEMBER)
        cancellation = await service.cancel_execution(
            db=page.db, principal=page.principal, context=page.audit, execution_id=execution_id
        )
        after_cancel_commit(page.signed_in, cancellation)
    return redirect(f"/ui/executions/{execution_id}?notice=execution-cancelled")


@router.post("/{execution_id}/retry")
async def retry_execution(execution_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.MEMBER)
        execution = await service.retry_execution(
            db=page.db,
            principal=page.principal,
            context=page.audit,
            execution_id=execution_id,
            max_queued=queue_limit(page.signed_in),
        )
        enqueue_after_commit(page.signed_in, execution, replace=True)
    return redirect(f"/ui/executions/{execution_id}?notice=execution-retried")


@router.post("/{execution_id}/rerun")
async def rerun_execution(execution_id: uuid.UUID, request: Request) -> Response:
    """The Re-run from step form: a new execution of a finished one, from the step chosen
    (none: all of it), on its original definition or the workflow's current one."""
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        chosen = forms.text(form, "definition") or reruns.Definition.ORIGINAL
        if chosen not in set(reruns.Definition):
            raise BadRequest("choose the original or the current definition")
        execution = await reruns.rerun_execution(
            db=page.db,
            principal=page.principal,
            context=page.audit,
            execution_id=execution_id,
            rerun=reruns.Rerun(reruns.Definition(chosen), forms.optional_text(form, "from_step")),
            max_queued=queue_limit(page.signed_in),
        )
        enqueue_after_commit(page.signed_in, execution, replace=False)
        count_start_after_commit(
            page.signed_in, service.StartKind.RETRY, service.Started(execution)
        )
    return redirect(f"/ui/executions/{execution.id}?notice=execution-rerun")
