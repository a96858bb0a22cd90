"""Invitations: how a person joins an organization, with their consent.

An admin invites an email address; nothing is looked up about it, so the answer is the same
whether or not someone has an account with that address. The person whose account has that
email (now, or once they register) sees the invitation, with the organization's name and the
role, and accepts or declines it. Invitations expire after `INVITATION_TTL`, cannot carry the
owner role (owners are made from members, `service.change_role`), and every step is audited in
the organization's chain.

Row-level security lets a person read the invitations addressed to their own email while acting
in any organization; accepting and declining then switch the transaction's tenant to the
invitation's organization, as creating an organization does, to write the membership and the
audit row there.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.models import User
from taskloom.auth.principal import Principal
from taskloom.db.engine import Database
from taskloom.db.tenancy import set_tenant, system_transaction
from taskloom.errors import Conflict, Gone, NotFound, ValidationFailed
from taskloom.orgs.models import (
    INVITABLE_ROLES,
    Invitation,
    InvitationStatus,
    Membership,
    Organization,
    Role,
)
from taskloom.orgs.service import current_org, ensure_may_grant

INVITATION_TTL = timedelta(days=7)
_PENDING = InvitationStatus.PENDING.value


@dataclass(frozen=True)
class PendingInvitation:
    """An organization's open invitation, as its admins see it."""

    id: uuid.UUID
    email: str
    role: Role
    invited_by: uuid.UUID | None
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class ReceivedInvitation:
    """An invitation as the invited person sees it: which organization, which role."""

    id: uuid.UUID
    org_id: uuid.UUID
    org_name: str
    role: Role
    created_at: datetime
    expires_at: datetime


# --- the organization's side (admins) ------------------------------------------------------------


async def invite(
    *, db: AsyncSession, principal: Principal, context: AuditContext, email: str, role: Role
) -> uuid.UUID:
    """Invite `email` (already normalized) to the current organization with `role`; returns the
    invitation's id. The same work is done whether or not the address has an account."""
    org_id = current_org(principal)
    if role not in INVITABLE_ROLES:
        raise ValidationFailed(
            "an invitation cannot make someone an owner: invite them, then promote the member",
            code="owner_by_invitation",
        )
    ensure_may_grant(principal, role)
    # Only the organization's own members are visible here: this reveals nothing the admin
    # cannot read on the members list.
    member = await db.execute(
        select(Membership.id)
        .join(User, User.id == Membership.user_id)
        .where(Membership.org_id == org_id, func.lower(User.email) == email)
    )
    if member.first() is not None:
        raise Conflict("that person is already a member", code="already_member")
    # An earlier invitation past its expiry stops counting as open.
    await db.execute(
        update(Invitation)
        .where(
            Invitation.org_id == org_id,
            Invitation.email == email,
            Invitation.status == _PENDING,
            Invitation.expires_at <= func.now(),
        )
        .values(status=InvitationStatus.EXPIRED.value, closed_at=func.now())
    )
    created = await db.execute(
        insert(Invitation)
        .values(
            id=uuid.uuid4(),
            org_id=org_id,
            email=email,
            role=role.value,
            status=_PENDING,
            invited_by=principal.user_id,
            expires_at=func.now() + INVITATION_TTL,
        )
        .on_conflict_do_nothing(
            index_elements=[Invitation.org_id, Invitation.email],
            # The partial unique index's own predicate, as a literal (PostgreSQL matches it).
            index_where=text("status = 'pending'"),
        )
        .returning(Invitation.id)
    )
    invitation_id = created.scalar()
    if invitation_id is None:
        raise Conflict(
            "that address already has an open invitation; revoke it to send another",
            code="already_invited",
        )
    # The address stays in the invitation row (deleted on erasure), out of the append-only log.
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_INVITE,
        org_id=org_id,
        resource_type="invitation",
        resource_id=invitation_id,
        details={"role": role.value},
    )
    return invitation_id


async def list_pending(
    *, db: AsyncSession, principal: Principal, invitation_id: uuid.UUID | None = None
) -> list[PendingInvitation]:
    """The current organization's open, unexpired invitations (or the one `invitation_id`),
    newest first."""
    query = select(Invitation).where(
        Invitation.org_id == current_org(principal),
        Invitation.status == _PENDING,
        Invitation.expires_at > func.now(),
    )
    if invitation_id is not None:
        query = query.where(Invitation.id == invitation_id)
    rows = await db.execute(query.order_by(Invitation.created_at.desc(), Invitation.id))
    return [
        PendingInvitation(i.id, i.email, Role(i.role), i.invited_by, i.created_at, i.expires_at)
        for i in rows.scalars()
    ]


async def get_pending(
    *, db: AsyncSession, principal: Principal, invitation_id: uuid.UUID
) -> PendingInvitation:
    """One of the current organization's open invitations, or NotFound."""
    found = await list_pending(db=db, principal=principal, invitation_id=invitation_id)
    if not found:
        raise NotFound("invitation not found")
    return found[0]


async def revoke(
    *, db: AsyncSession, principal: Principal, context: AuditContext, invitation_id: uuid.UUID
) -> None:
    """Withdraw one of the current organization's open invitations."""
    org_id = current_org(principal)
    invitation = (
        await db.execute(
            select(Invitation)
            # Explicitly this organization's: row-level security also shows the caller the
            # invitations addressed to them by other organizations.
            .where(Invitation.id == invitation_id, Invitation.org_id == org_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if invitation is None:
        raise NotFound("invitation not found")
    _ensure_open(invitation)
    ensure_may_grant(principal, Role(invitation.role))
    invitation.status = InvitationStatus.REVOKED.value
    invitation.closed_at = await _now(db)
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_INVITE_REVOKE,
        org_id=org_id,
        resource_type="invitation",
        resource_id=invitation_id,
        details={"role": invitation.role},
    )


# --- the invited person's side -------------------------------------------------------------------


async def list_received(
    *, db: AsyncSession, database: Database, principal: Principal
) -> list[ReceivedInvitation]:
    """The caller's open, unexpired invitations, from every organization."""
    rows = (
        await db.execute(
            select(Invitation)
            .where(
                Invitation.email == await _my_email(db, principal),
                Invitation.status == _PENDING,
                Invitation.expires_at > func.now(),
            )
            .order_by(Invitation.created_at.desc(), Invitation.id)
        )
    ).scalars()
    invitations = list(rows)
    names = await _org_names(database, {i.org_id for i in invitations})
    return [
        ReceivedInvitation(
            i.id, i.org_id, names[i.org_id], Role(i.role), i.created_at, i.expires_at
        )
        for i in invitations
        if i.org_id in names
    ]


async def accept(
    *, db: AsyncSession, principal: Principal, context: AuditContext, invitation_id: uuid.UUID
) -> ReceivedInvitation:
    """Join the inviting organization with the invitation's role. The rest of the caller's
    transaction acts in that organization."""
    invitation = await _open_for_me(db, principal, invitation_id)
    org_id = invitation.org_id
    existing = await db.execute(
        select(Membership.id).where(
            Membership.org_id == org_id, Membership.user_id == principal.user_id
        )
    )
    if existing.first() is not None:
        raise Conflict("you are already a member of this organization", code="already_member")
    role = Role(invitation.role)
    db.add(
        Membership(
            org_id=org_id,
            user_id=principal.user_id,
            role=role.value,
            invited_by=invitation.invited_by,
        )
    )
    invitation.status = InvitationStatus.ACCEPTED.value
    invitation.closed_at = await _now(db)
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_INVITE_ACCEPT,
        org_id=org_id,
        resource_type="user",
        resource_id=principal.user_id,
        details={"role": role.value, "invitation_id": str(invitation_id)},
    )
    # A member now: the organization's row is visible to the caller.
    name = await db.scalar(select(Organization.name).where(Organization.id == org_id))
    return ReceivedInvitation(
        invitation.id, org_id, str(name), role, invitation.created_at, invitation.expires_at
    )


async def decline(
    *, db: AsyncSession, principal: Principal, context: AuditContext, invitation_id: uuid.UUID
) -> None:
    """Say no; the organization's admins see it in their audit log."""
    invitation = await _open_for_me(db, principal, invitation_id)
    invitation.status = InvitationStatus.DECLINED.value
    invitation.closed_at = await _now(db)
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_INVITE_DECLINE,
        org_id=invitation.org_id,
        resource_type="invitation",
        resource_id=invitation_id,
        details={"role": invitation.role},
    )


async def is_invited(*, database: Database, email: str) -> bool:
    """Whether `email` has a pending, unexpired invitation to any organization (registration by
    invitation). System transaction: asked before the person has an account or a tenant."""
    async with system_transaction(database) as db:
        found = await db.execute(
            select(Invitation.id)
            .where(
                Invitation.email == email.lower(),
                Invitation.status == _PENDING,
                Invitation.expires_at > func.now(),
            )
            .limit(1)
        )
        return found.scalar() is not None


async def delete_invitations_to(*, db: AsyncSession, email: str) -> int:
    """Erasure (privileged transaction): invitations addressed to the person, whatever their
    status and organization, go; the address is personal data."""
    deleted = await db.execute(delete(Invitation).where(Invitation.email == email.lower()))
    return int(getattr(deleted, "rowcount", 0) or 0)


async def _my_email(db: AsyncSession, principal: Principal) -> str:
    email = (
        await db.execute(select(func.lower(User.email)).where(User.id == principal.user_id))
    ).scalar_one()
    return str(email)


async def _open_for_me(
    db: AsyncSession, principal: Principal, invitation_id: uuid.UUID
) -> Invitation:
    """The open invitation addressed to the caller, locked, with the transaction's tenant
    switched to its organization. Someone else's (or an unknown) id is 404 — whether it exists
    is not the caller's business; an expired one is 410, an answered one 409."""
    found = (
        await db.execute(
            select(Invitation.org_id).where(
                Invitation.id == invitation_id,
                Invitation.email == await _my_email(db, principal),
            )
        )
    ).scalar()
    if found is None:
        raise NotFound("invitation not found")
    # Checked above that the invitation is addressed to the caller: only now may the
    # transaction act in its organization (where the row can be locked and updated).
    await set_tenant(db, org_id=found, user_id=principal.user_id)
    invitation = (
        await db.execute(
            select(Invitation)
            .where(Invitation.id == invitation_id, Invitation.org_id == found)
            .with_for_update()
        )
    ).scalar_one()
    _ensure_open(invitation)
    if invitation.expires_at <= await _now(db):
        raise Gone("the invitation has expired; ask for a new one", code="invitation_expired")
    return invitation


def _ensure_open(invitation: Invitation) -> None:
    if invitation.status != _PENDING:
        raise Conflict(f"the invitation was already {invitation.status}", code="invitation_closed")


async def _now(db: AsyncSession) -> datetime:
    """The database's clock (the one `expires_at` was set with)."""
    return (await db.execute(select(func.now()))).scalar_one()


async def _org_names(database: Database, org_ids: set[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Names of organizations the caller is invited to but cannot read (not a member yet).
    System transaction, name only: the ids come from invitations row-level security showed
    the caller, so nothing else about those organizations, or any other, leaves here."""
    if not org_ids:
        return {}
    async with system_transaction(database) as db:
        rows = await db.execute(
            select(Organization.id, Organization.name).where(Organization.id.in_(org_ids))
        )
        return {row.id: row.name for row in rows}
