"""A workflow's History tab: its versions, newest first (who saved each, when, and why), the diff
between any two of them (rendered here, escaped by the templates like any text), and, for
members, a Restore button per version (workflows/restore.py, as the API's restore: triggers and
schedules included; one that touches a webhook trigger needs an admin). A restore that
re-created a webhook trigger answers with its new secret on this page, shown once."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import APIRouter, Request
from pydantic import ValidationError
from sqlalchemy import select
from starlette.responses import Response

from taskloom.auth.models import User
from taskloom.errors import DomainError, NotFound
from taskloom.orgs.models import Role
from taskloom.triggers.service import hook_url
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain, from_validation, optional_text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in
from taskloom.workflows import service, versions
from taskloom.workflows.models import Workflow, WorkflowVersion
from taskloom.workflows.restore import restore_version
from taskloom.workflows.schemas import RestoreRequest

router = APIRouter(prefix="/ui/workflows", route_class=UiRoute, include_in_schema=False)

VERSIONS_SHOWN = 50


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "file" or "same": the line's class on the page
    text: str


@dataclass(frozen=True)
class Comparison:
    old: int | None
    new: int
    lines: list[DiffLine]


@dataclass(frozen=True)
class NewSecret:
    trigger_id: uuid.UUID
    url: str
    secret: str


def _kind(line: str) -> str:
    if line.startswith(("---", "+++")):
        return "file"
    if line.startswith("@@"):
        return "hunk"
    return {"+": "add", "-": "del"}.get(line[:1], "same")


def _number(raw: str | None) -> int | None:
    """A version number from the query string; anything else is left out."""
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw) or None


async def _comparison(
    page: Page, workflow: Workflow, old: int | None, new: int | None
) -> Comparison | None:
    """The diff asked for (`?from=&to=`), else the newest version against the one before."""
    if new is None:
        if workflow.version < 2 or old is not None:
            return None
        new = workflow.version
    before, after, text = await versions.diff(
        db=page.db, workflow_id=workflow.id, number=new, against=old
    )
    lines = [DiffLine(_kind(line), line.rstrip("\n")) for line in text.splitlines()]
    return Comparison(before.number if before else None, after.number, lines)


async def _authors(page: Page, items: list[WorkflowVersion]) -> dict[uuid.UUID, str]:
    """The names of the people who saved these versions, among those the caller may see (the
    organization's members, by row-level security); the others are shown by id."""
    ids = {v.created_by for v in items if v.created_by is not None}
    if not ids:
        return {}
    rows = await page.db.execute(select(User.id, User.display_name).where(User.id.in_(ids)))
    return {row.id: row.display_name for row in rows}


async def _tab(
    page: Page,
    workflow: Workflow,
    *,
    old: int | None = None,
    new: int | None = None,
    cursor: str | None = None,
    status: int = 200,
    errors: list[FieldError] | None = None,
    secrets: list[NewSecret] | None = None,
    restored: WorkflowVersion | None = None,
) -> Response:
    items, next_cursor = await versions.list_versions(
        db=page.db, workflow_id=workflow.id, cursor=cursor, limit=VERSIONS_SHOWN
    )
    authors = await _authors(page, items)
    try:
        comparison = await _comparison(page, workflow, old, new)
        compare_error = None
    except NotFound as missing:
        comparison, compare_error = None, missing.message
    return render(
        page,
        "workflows/versions.html",
        status=status,
        title=f"{workflow.name}: history",
        tab="versions",
        workflow=workflow,
        versions=items,
        authors=authors,
        next_cursor=next_cursor,
        comparison=comparison,
        compare_error=compare_error,
        compare_from=old if old is not None else (comparison.old if comparison else None),
        compare_to=new if new is not None else (comparison.new if comparison else None),
        errors=errors or [],
        secrets=secrets or [],
        restored=restored,
    )


@router.get("/{workflow_id}/versions")
async def show_versions(workflow_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.VIEWER)
        workflow = await service.get_workflow(db=page.db, workflow_id=workflow_id)
        query = request.query_params
        return await _tab(
            page,
            workflow,
            old=_number(query.get("from")),
            new=_number(query.get("to")),
            cursor=query.get("cursor") or None,
        )


@router.post("/{workflow_id}/versions/{number}/restore")
async def restore(workflow_id: uuid.UUID, number: int, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.MEMBER)
        workflow = await service.get_workflow(db=page.db, workflow_id=workflow_id)
        try:
            body = RestoreRequest.model_validate({"message": optional_text(form, "message")})
            # A savepoint: a refused restore (a webhook trigger for a member, a definition that
            # no longer validates) leaves nothing half-restored behind.
            async with page.db.begin_nested():
                created, restored = await restore_version(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    settings=page.runtime.settings,
                    cipher=page.runtime.cipher,
                    workflow_id=workflow_id,
                    number=number,
                    message=body.message,
                )
        except (ValidationError, DomainError) as problem:
            await page.db.refresh(workflow)
            if isinstance(problem, ValidationError):
                errors, status = from_validation(problem), 422
            else:
                errors, status = from_domain(problem), problem.status_code
            return await _tab(page, workflow, status=status, errors=errors)
        if not restored.secrets:
            return redirect(f"/ui/workflows/{workflow_id}/versions?notice=version-restored")
        await page.db.refresh(workflow)
        settings = page.runtime.settings
        secrets = [NewSecret(t.id, hook_url(settings, t.id), s) for t, s in restored.secrets]
        return await _tab(page, workflow, secrets=secrets, restored=created)
