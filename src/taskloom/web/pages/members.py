"""Members, roles and invitations of the current organization (admins), and its single sign-on
setting (owners change it, through sso/required.py as PATCH /api/org does; admins read it)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from taskloom.errors import DomainError
from taskloom.orgs import invitations, service
from taskloom.orgs.models import INVITABLE_ROLES, Role
from taskloom.orgs.schemas import MemberInvite, MemberUpdate
from taskloom.sso import required as sso_required
from taskloom.web.errors import UiRoute
from taskloom.web.forms import FieldError, from_domain, from_validation, text
from taskloom.web.rendering import redirect, render
from taskloom.web.session import Page, signed_in

router = APIRouter(prefix="/ui/admin/members", route_class=UiRoute, include_in_schema=False)


async def _render(
    page: Page,
    *,
    status: int = 200,
    errors: list[FieldError] | None = None,
    email: str = "",
    sso_errors: list[FieldError] | None = None,
) -> Response:
    members = await service.list_members(db=page.db, principal=page.principal)
    pending = await invitations.list_pending(db=page.db, principal=page.principal)
    org = await service.get_current_organization(db=page.db, principal=page.principal)
    return render(
        page,
        "admin/members.html",
        status=status,
        title="Members",
        members=members,
        invitations=pending,
        roles=[r.value for r in Role],
        invitable_roles=[r.value for r in INVITABLE_ROLES],
        errors=errors or [],
        email=email,
        org=org,
        owners=[m for m in members if m.role == Role.OWNER],
        may_change_sso=page.principal.has_role(Role.OWNER),
        sso_errors=sso_errors or [],
    )


@router.get("")
async def members(request: Request) -> Response:
    async with signed_in(request) as page:
        page.require_role(Role.ADMIN)
        return await _render(page)


@router.post("")
async def invite(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        email = text(form, "email")
        try:
            body = MemberInvite.model_validate(
                {"email": email, "role": text(form, "role") or "member"}
            )
            async with page.db.begin_nested():
                await invitations.invite(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    email=body.email,
                    role=body.role,
                )
        except ValidationError as invalid:
            return await _render(page, status=422, errors=from_validation(invalid), email=email)
        except DomainError as refused:
            return await _render(
                page, status=refused.status_code, errors=from_domain(refused), email=email
            )
    return redirect("/ui/admin/members?notice=invitation-created")


@router.post("/invitations/{invitation_id}/revoke")
async def revoke_invitation(invitation_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        try:
            async with page.db.begin_nested():
                await invitations.revoke(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    invitation_id=invitation_id,
                )
        except DomainError as refused:
            return await _render(page, status=refused.status_code, errors=from_domain(refused))
    return redirect("/ui/admin/members?notice=invitation-revoked")


@router.post("/{user_id}/role")
async def change_role(user_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        try:
            body = MemberUpdate.model_validate({"role": text(form, "role")})
            async with page.db.begin_nested():
                await service.change_role(
                    db=page.db,
                    principal=page.principal,
                    context=page.audit,
                    user_id=user_id,
                    role=body.role,
                )
        except ValidationError as invalid:
            return await _render(page, status=422, errors=from_validation(invalid))
        except DomainError as refused:
            return await _render(page, status=refused.status_code, errors=from_domain(refused))
    return redirect("/ui/admin/members?notice=member-updated")


@router.post("/{user_id}/remove")
async def remove_member(user_id: uuid.UUID, request: Request) -> Response:
    async with signed_in(request) as page:
        await page.form()
        page.require_role(Role.ADMIN)
        try:
            async with page.db.begin_nested():
                await service.remove_member(
                    db=page.db, principal=page.principal, context=page.audit, user_id=user_id
                )
        except DomainError as refused:
            return await _render(page, status=refused.status_code, errors=from_domain(refused))
    return redirect("/ui/admin/members?notice=member-removed")


@router.post("/sso")
async def change_sso(request: Request) -> Response:
    async with signed_in(request) as page:
        form = await page.form()
        page.require_role(Role.ADMIN)
        chosen = text(form, "break_glass_user_id").strip()
        try:
            break_glass = uuid.UUID(chosen) if chosen else None
        except ValueError:
            problem = [FieldError("break_glass_user_id", "choose one of the owners, or none")]
            return await _render(page, status=422, sso_errors=problem)
        try:
            # Its own system transaction, committed before this page's (as PATCH /api/org).
            await sso_required.change(
                runtime=page.runtime,
                principal=page.principal,
                context=page.audit,
                sso_required=text(form, "sso_required") == "true",
                break_glass_user_id=break_glass,
            )
        except DomainError as refused:
            return await _render(page, status=refused.status_code, sso_errors=from_domain(refused))
    return redirect("/ui/admin/members?notice=org-sso-saved")
