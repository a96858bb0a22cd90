"""The invitations the signed-in person received: accept or decline each (everyone, in any
organization or none)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from taskloom.errors import DomainError
from taskloom.orgs import invitations
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/invitations", route_class=UiRoute, include_in_schema=False)


async def _render(
    page: Page, *, status: int = 200, errors: list[FieldError] | None = None
) -> Response:
    received = await invitations.list_received(
        db=page.db, database=page.runtime.database, principal=page.principal
    )
    return render(
        page,
        "invitations.html",
        status=status,
        title="Invitations",
        invitations=received,
        errors=errors or [],
    )


@router.get("")
async def received(request: Request) -> Response:
    async with signed_in(request) as page:
        return await _render(page)


@router.post("/{invitation_id}/accept")
async def accept(invitation_id: uuid.UUID, request: Request) -> Response:
    return await _answer(request, invitations.accept, invitation_id, notice="invitation-accepted")


@router.post("/{invitation_id}/decline")
async def decline(invitation_id: uuid.UUID, request: Request) -> Response:
    return await _answer(request, invitations.decline, invitation_id, notice="invitation-declined")


async def _answer(
    request: Request,
    answer: Callable[..., Awaitable[object]],
    invitation_id: uuid.UUID,
    *,
    notice: str,
) -> Response:
    async with signed_in(request) as page:
        await page.form()
        try:
            # A savepoint: a refusal also undoes the switch to the invitation's organization.
            async with page.db.begin_nested():
                await answer(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    invitation_id=invitation_id,
                )
        except DomainError as refused:
            return await _render(page, status=refused.status_code, errors=from_domain(refused))
    return redirect(f"/ui/invitations?notice={notice}")
