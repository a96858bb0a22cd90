"""Workflows: list, create, edit the definition as JSON (with the service's own validation
messages next to the field; a save after someone else's since the page was read is refused,
as `If-Match` would be), enable or disable, run (with the form the workflow's input schema
describes, else JSON input), delete."""

from __future__ import annotations

import json
import uuid
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.ai import summary as ai_summary
from taskloom.db.driver import session_connection
from taskloom.errors import DomainError, TooManyQueued, ValidationFailed
from taskloom.executions import service as execution_service
from taskloom.executions.queue import count_start_after_commit, enqueue_after_commit, queue_limit
from taskloom.executions.schemas import ExecuteRequest
from taskloom.orgs.models import Role
from taskloom.web import schema_form
from taskloom.web.errors import UiRoute
from taskloom.web.forms import (
    FieldError,
    FormProblem,
    from_domain,
    from_validation,
    json_field,
    optional_text,
    text,
)
from taskloom.web.graph import render_graph
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in
from taskloom.workflows import service, templates
from taskloom.workflows.graph import Graph
from taskloom.workflows.models import Workflow
from taskloom.workflows.schemas import WorkflowCreate, WorkflowUpdate

router = APIRouter(prefix="/ui/workflows", route_class=UiRoute, include_in_schema=False)

EXAMPLE_DEFINITION = {
    "steps": [
        {
            "id": "greet",
            "type": "transform",
            "args": {"value": {"greeting": "Hello, {{ input.name }}!"}},
        }
    ]
}


def _definition_text(definition: Any) -> str:
    """The stored definition as people write it: each step's id, type, its other fields, then
    args last (JSONB keeps its keys in its own order)."""
    if isinstance(definition, dict) and isinstance(definition.get("steps"), list):
        order = {"id": 0, "type": 1, "needs": 2, "args": 4}
        steps = [
            dict(sorted(s.items(), key=lambda kv: order.get(kv[0], 3)))
            if isinstance(s, dict)
            else s
            for s in definition["steps"]
        ]
        definition = {**definition, "steps": steps}
    return json.dumps(definition, indent=2, ensure_ascii=False)


_Body = TypeVar("_Body", bound=WorkflowCreate)


def _parsed(form_values: dict[str, Any], definition: Any, model: type[_Body]) -> _Body:
    """The form as a create or update body (an update leaves `enabled` as it is)."""
    return model.model_validate(
        {
            "name": form_values["name"],
            "description": form_values["description"],
            "definition": definition,
            "message": form_values["message"],
        }
    )


def _posted(form: Any) -> dict[str, Any]:
    return {
        "name": text(form, "name").strip(),
        "description": optional_text(form, "description"),
        "definition": text(form, "definition"),
        "message": optional_text(form, "message"),
    }


@router.get("")
async def list_workflows(request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        workflows = await service.list_workflows(
            reads=await session_connection(page.db), principal=page.principal
        )
        return render(page, "workflows/list.html", title="Workflows", workflows=workflows)


@router.get("/new")
async def new_workflow(request: Request, template: str | None = None) -> Response:
    """The form, empty but for an example definition, or filled from a template
    (`?template=<name>`, workflows/templates.py; its triggers are made on the Triggers tab)."""
    async with signed_in(request) as page:
        page.require_role(Role.MEMBER)
        chosen = templates.available().get(template or "")
        values = {
            "name": chosen.workflow.name if chosen else "",
            "description": (chosen.workflow.description or "") if chosen else "",
            "definition": _definition_text(
                chosen.workflow.definition.stored() if chosen else EXAMPLE_DEFINITION
            ),
            "message": f"From the {chosen.name} template" if chosen else "",
        }
        return render(
            page,
            "workflows/new.html",
            title="New workflow",
            values=values,
            errors=[],
            templates=templates.available().values(),
            chosen=chosen,
        )


@router.post("/new")
async def create_workflow(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        values = _posted(form)
        try:
            body = _parsed(values, json_field(form, "definition"), WorkflowCreate)
            async with page.db.begin_nested():
                workflow = await service.create_workflow(
                    db=page.db, principal=page.principal, context=page.audit, body=body
                )
        except (FormProblem, ValidationError, DomainError) as problem:
            errors = _errors(problem)
            return render(
                page,
                "workflows/new.html",
                status=_status(problem),
                title="New workflow",
                values={**values, "description": values["description"] or ""},
                errors=errors,
                templates=templates.available().values(),
                chosen=None,
            )
        return redirect(f"/ui/workflows/{workflow.id}?notice=workflow-created")


def _errors(problem: Exception) -> list[FieldError]:
    if isinstance(problem, FormProblem):
        return problem.errors
    if isinstance(problem, ValidationError):
        return from_validation(problem)
    assert isinstance(problem, DomainError)
    return from_domain(problem)


def _status(problem: Exception) -> int:
    return problem.status_code if isinstance(problem, DomainError) else 422


async def _workflow_page(
    page: Page,
    workflow: Workflow,
    *,
    status: int = 200,
    values: dict[str, Any] | None = None,
    errors: list[FieldError] | None = None,
    run_input: str = "{}",
    run_values: dict[str, str] | None = None,
    run_errors: list[FieldError] | None = None,
) -> Response:
    executions, _ = await execution_service.list_executions(
        reads=await session_connection(page.db),
        principal=page.principal,
        workflow_id=workflow.id,
        limit=10,
    )
    shown = values or {
        "name": workflow.name,
        "description": workflow.description or "",
        "definition": _definition_text(workflow.definition),
        "message": "",
    }
    run_fields = schema_form.fields_of(workflow.definition.get("input_schema"))
    ai_month = await ai_summary.workflow_month(
        page.db, org_id=workflow.org_id, workflow_id=workflow.id
    )
    return render(
        page,
        "workflows/edit.html",
        status=status,
        title=workflow.name,
        tab="workflow",
        workflow=workflow,
        values=shown,
        errors=errors or [],
        run_input=run_input,
        run_fields=run_fields,
        run_values=run_values or schema_form.initial_values(run_fields or []),
        run_errors=run_errors or [],
        executions=executions,
        graph_svg=render_graph(Graph.of(workflow.definition)),
        ai_month=ai_month,
    )


@router.get("/{workflow_id}")
async def show_workflow(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        workflow = await service.get_workflow(db=page.db, workflow_id=workflow_id)
        return await _workflow_page(page, workflow)


@router.post("/{workflow_id}")
async def update_workflow(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        workflow = await service.get_workflow(db=page.db, workflow_id=workflow_id)
        values = _posted(form)
        try:
            body = _parsed(values, json_field(form, "definition"), WorkflowUpdate)
            # A savepoint: a refused definition leaves nothing half-changed behind.
            read_at = text(form, "version")  # the version the form was read at
            async with page.db.begin_nested():
                await service.update_workflow(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    workflow_id=workflow_id,
                    body=body,
                    if_match=f'"{read_at}"' if read_at else None,
                )
        except (FormProblem, ValidationError, DomainError) as problem:
            await page.db.refresh(workflow)  # the savepoint's rollback expired its changes
            shown = {**values, "description": values["description"] or ""}
            return await _workflow_page(
                page, workflow, status=_status(problem), values=shown, errors=_errors(problem)
            )
        return redirect(f"/ui/workflows/{workflow_id}?notice=workflow-saved")


def _run_input(fields: list[schema_form.Field] | None, form: Any) -> dict[str, Any]:
    """The input the run form describes: typed from the schema's fields, else the JSON text."""
    if fields is not None:
        return schema_form.read_input(fields, form)
    return ExecuteRequest.model_validate({"input": json_field(form, "input", default={})}).input


def _run_errors(problem: Exception) -> list[FieldError]:
    """The run form's errors; those of the raw JSON textarea all belong to it, the schema's
    name their field (`input.<property>`)."""
    errors = _errors(problem)
    if isinstance(problem, FormProblem | ValidationFailed):
        return [e if _under_input(e.field) else FieldError("input", e.message) for e in errors]
    return [FieldError("input", e.message) for e in errors]


def _under_input(path: str) -> bool:
    return path == "input" or path.startswith(schema_form.PREFIX)


@router.post("/{workflow_id}/run")
async def run_workflow(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        workflow = await service.get_workflow(db=page.db, workflow_id=workflow_id)
        fields = schema_form.fields_of(workflow.definition.get("input_schema"))
        try:
            started = await execution_service.start_execution(
                db=page.db,
                org_id=page.principal.current_org(),
                workflow_id=workflow_id,
                input=_run_input(fields, form),
                max_queued=queue_limit(page.signed_in),
                origin=execution_service.api_origin(page.principal, page.audit),
            )
            execution = started.execution
        except (FormProblem, ValidationError, ValidationFailed, TooManyQueued) as problem:
            shown = await _workflow_page(
                page,
                workflow,
                status=_status(problem),
                run_input=text(form, "input"),
                run_values=schema_form.posted_values(fields, form) if fields else None,
                run_errors=_run_errors(problem),
            )
            if isinstance(problem, TooManyQueued) and problem.headers:
                shown.headers.update(problem.headers)  # Retry-After
            return shown
        enqueue_after_commit(page.signed_in, execution, replace=False)
        count_start_after_commit(page.signed_in, execution_service.StartKind.API, started)
    return redirect(f"/ui/executions/{execution.id}")


@router.post("/{workflow_id}/enabled")
async def set_enabled(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        enabled = text(form, "enabled") == "true"
        await service.set_enabled(
            db=page.db,
            principal=page.principal,
            context=page.audit,
            workflow_id=workflow_id,
            enabled=enabled,
        )
    notice = "workflow-enabled" if enabled else "workflow-disabled"
    return redirect(f"/ui/workflows/{workflow_id}?notice={notice}")


@router.post("/{workflow_id}/delete")
async def delete_workflow(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.MEMBER)
        await service.delete_workflow(
            db=page.db, principal=page.principal, context=page.audit, workflow_id=workflow_id
        )
    return redirect("/ui/workflows?notice=workflow-deleted")
