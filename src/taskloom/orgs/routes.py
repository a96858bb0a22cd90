"""/api/orgs (mine), /api/org (the current one), /api/members (of the current one, and its
invitations), /api/invitations (the ones the caller received)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from taskloom.auth.access import access
from taskloom.auth.deps import Admin, Context, Session, Viewer
from taskloom.locations import located, set_location
from taskloom.orgs import invitations, service
from taskloom.orgs.schemas import (
    InvitationAccepted,
    InvitationCreated,
    MemberInvite,
    MemberOut,
    MemberUpdate,
    MyOrgOut,
    OrgCreate,
    OrgOut,
    OrgUpdate,
    PendingInvitationOut,
    ReceivedInvitationOut,
)
from taskloom.sso import required as sso_required

router = APIRouter(prefix="/api", tags=["organizations"])


def _member_out(member: service.Member) -> MemberOut:
    return MemberOut(
        user_id=member.user_id,
        email=member.email,
        display_name=member.display_name,
        role=member.role,
        joined_at=member.joined_at,
    )


def _my_org_out(org: service.MyOrganization, ctx: Context) -> MyOrgOut:
    return MyOrgOut(
        org_id=org.org_id,
        name=org.name,
        slug=org.slug,
        role=org.role,
        current=org.org_id == ctx.principal.org_id,
    )


@router.get("/orgs", openapi_extra=access("authenticated"))
async def list_my_orgs(ctx: Context) -> list[MyOrgOut]:
    orgs = await service.list_my_organizations(db=ctx.db, principal=ctx.principal)
    return [_my_org_out(o, ctx) for o in orgs]


@router.get("/orgs/{org_id}", openapi_extra=access("authenticated"))
async def get_my_org(org_id: uuid.UUID, ctx: Context) -> MyOrgOut:
    org = await service.get_my_organization(db=ctx.db, principal=ctx.principal, org_id=org_id)
    return _my_org_out(org, ctx)


@router.post(
    "/orgs",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=access("authenticated", api_key=False),
    responses=located(201),
)
async def create_org(body: OrgCreate, ctx: Session, response: Response) -> OrgOut:
    org = await service.create_organization(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, name=body.name
    )
    set_location(response, f"/api/orgs/{org.id}")
    return OrgOut.model_validate(org)


@router.get("/org", openapi_extra=access("viewer"))
async def get_current_org(ctx: Viewer) -> OrgOut:
    org = await service.get_current_organization(db=ctx.db, principal=ctx.principal)
    return OrgOut.model_validate(org)


@router.patch("/org", openapi_extra=access("admin"))
async def update_current_org(body: OrgUpdate, ctx: Admin) -> OrgOut:
    """Admins rename; owners also set single sign-on's requirement and break-glass owner."""
    if body.changes_sso:  # first: it commits on its own (sso/required.py)
        fields = body.model_fields_set
        await sso_required.change(
            runtime=ctx.runtime,
            principal=ctx.principal,
            context=ctx.audit,
            sso_required=body.sso_required if body.sso_required is not None else sso_required.KEEP,
            break_glass_user_id=body.sso_break_glass_user_id
            if "sso_break_glass_user_id" in fields
            else sso_required.KEEP,
        )
    if body.name is not None:
        await service.rename_organization(
            db=ctx.db, principal=ctx.principal, context=ctx.audit, name=body.name
        )
    org = await service.get_current_organization(db=ctx.db, principal=ctx.principal)
    return OrgOut.model_validate(org)


@router.get("/members", openapi_extra=access("viewer"))
async def list_members(ctx: Viewer) -> list[MemberOut]:
    return [_member_out(m) for m in await service.list_members(db=ctx.db, principal=ctx.principal)]


# An invitation, never a membership: the person accepts it (POST /api/invitations/{id}/accept).
# 202 with an id either way: whether the address has an account is not the admin's to learn.
@router.post(
    "/members",
    status_code=status.HTTP_202_ACCEPTED,
    openapi_extra=access("admin"),
    responses=located(202),
)
async def invite_member(body: MemberInvite, ctx: Admin, response: Response) -> InvitationCreated:
    invitation_id = await invitations.invite(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, email=body.email, role=body.role
    )
    set_location(response, f"/api/members/invitations/{invitation_id}")
    return InvitationCreated(invitation_id=invitation_id)


@router.get("/members/invitations", openapi_extra=access("admin"))
async def list_pending_invitations(ctx: Admin) -> list[PendingInvitationOut]:
    pending = await invitations.list_pending(db=ctx.db, principal=ctx.principal)
    return [PendingInvitationOut.model_validate(i, from_attributes=True) for i in pending]


@router.get("/members/invitations/{invitation_id}", openapi_extra=access("admin"))
async def get_pending_invitation(invitation_id: uuid.UUID, ctx: Admin) -> PendingInvitationOut:
    invitation = await invitations.get_pending(
        db=ctx.db, principal=ctx.principal, invitation_id=invitation_id
    )
    return PendingInvitationOut.model_validate(invitation, from_attributes=True)


@router.delete(
    "/members/invitations/{invitation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("admin"),
)
async def revoke_invitation(invitation_id: uuid.UUID, ctx: Admin) -> Response:
    await invitations.revoke(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, invitation_id=invitation_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# The invited person's side: their own account, so a signed-in session (not an API key, which
# is bound to one organization) in any organization or none.
@router.get("/invitations", openapi_extra=access("authenticated", api_key=False))
async def list_my_invitations(ctx: Session) -> list[ReceivedInvitationOut]:
    received = await invitations.list_received(
        db=ctx.db, database=ctx.runtime.database, principal=ctx.principal
    )
    return [ReceivedInvitationOut.model_validate(i, from_attributes=True) for i in received]


@router.post(
    "/invitations/{invitation_id}/accept", openapi_extra=access("authenticated", api_key=False)
)
async def accept_invitation(invitation_id: uuid.UUID, ctx: Session) -> InvitationAccepted:
    invitation = await invitations.accept(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, invitation_id=invitation_id
    )
    return InvitationAccepted(org_id=invitation.org_id, role=invitation.role)


@router.post(
    "/invitations/{invitation_id}/decline",
    status_code=status.HTTP_204_NO_CONTENT,
    openapi_extra=access("authenticated", api_key=False),
)
async def decline_invitation(invitation_id: uuid.UUID, ctx: Session) -> Response:
    await invitations.decline(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, invitation_id=invitation_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/members/{user_id}", openapi_extra=access("admin"))
async def change_member_role(user_id: uuid.UUID, body: MemberUpdate, ctx: Admin) -> MemberOut:
    member = await service.change_role(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, user_id=user_id, role=body.role
    )
    return _member_out(member)


# Admins remove others; anyone may remove themselves (leave), which the service allows.
@router.delete(
    "/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, openapi_extra=access("admin")
)
async def remove_member(user_id: uuid.UUID, ctx: Viewer) -> Response:
    await service.remove_member(
        db=ctx.db, principal=ctx.principal, context=ctx.audit, user_id=user_id
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
