"""The audit log: the events you caused, or (owners and admins) your organization's, with the
API's filters; admins can verify the organization's hash chain."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.errors import DomainError
from taskloom.orgs.models import Role
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FormProblem, utc_datetime
from taskloom.web.rendering import render, with_query
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/audit", route_class=UiRoute, include_in_schema=False)

PAGE_SIZE = 50


@router.get("")
async def audit_log(
    request: Request,
    scope: Annotated[str, Query(max_length=8)] = "me",
    action: Annotated[str | None, Query(max_length=64)] = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    from_: Annotated[str | None, Query(alias="from", max_length=40)] = None,
    to: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async with signed_in(request) as page:
        filters = {
            "scope": scope if scope in ("me", "org") else "me",
            "action": action or "",
            "resource_type": resource_type or "",
            "from": from_ or "",
            "to": to or "",
        }
        try:
            rows, next_cursor = await audit.list_logs(
                session=page.db,
                principal=page.principal,
                context=page.audit,
                scope=_scope(filters["scope"]),
                action=action or None,
                resource_type=resource_type or None,
                since=utc_datetime(from_, "from"),
                until=utc_datetime(to, "to"),
                cursor=cursor,
                limit=PAGE_SIZE,
            )
        except (DomainError, FormProblem) as problem:
            status = problem.status_code if isinstance(problem, DomainError) else 400
            message = problem.message if isinstance(problem, DomainError) else str(problem)
            return _render(page, filters, [], None, status=status, error=message)
        next_url = with_query(request, cursor=next_cursor) if next_cursor else None
        return _render(page, filters, rows, next_url)


def _scope(value: str) -> Literal["me", "org"]:
    return "org" if value == "org" else "me"


def _render(
    page: Page,
    filters: dict[str, str],
    rows: Sequence[object],
    next_url: str | None,
    *,
    status: int = 200,
    error: str | None = None,
    chain: audit.ChainVerification | None = None,
) -> Response:
    return render(
        page,
        "audit.html",
        status=status,
        title="Audit log",
        filters=filters,
        rows=rows,
        next_url=next_url,
        actions=sorted(a.value for a in AuditAction),
        can_see_org=page.principal.has_role(Role.ADMIN),
        error=error,
        chain=chain,
    )


@router.post("/verify")
async def verify_chain(request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        result = await audit.verify_org_chain(
            session=page.db, principal=page.principal, context=page.audit
        )
        filters = {"scope": "org", "action": "", "resource_type": "", "from": "", "to": ""}
        return _render(page, filters, [], None, chain=result)
