"""Organizations and their members. An organization always keeps at least one owner; nobody
can grant a role above their own, and only owners can change or remove owners. People join by
accepting an invitation (orgs/invitations.py); there is no way to add someone directly."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth.models import User
from taskloom.auth.principal import Principal
from taskloom.db.tenancy import set_tenant
from taskloom.errors import Conflict, Forbidden, NotFound
from taskloom.orgs.models import Membership, Organization, Role


@dataclass(frozen=True)
class MyOrganization:
    org_id: uuid.UUID
    name: str
    slug: str
    role: Role


@dataclass(frozen=True)
class Member:
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    joined_at: datetime


_DEFAULT_SUFFIX = "'s workspace"


def slugify(name: str) -> str:
    """A URL-safe, unique-enough slug: the name's words plus a random suffix."""
    return f"{_slug_base(name)}-{secrets.token_hex(3)}"


def _slug_base(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60] or "org"


def default_name(display_name: str) -> str:
    """The organization registration creates when none is named: built from the person's
    display name (so erasure renames it, see `forget_default_names`)."""
    return display_name[: 200 - len(_DEFAULT_SUFFIX)] + _DEFAULT_SUFFIX


def neutral_name(org_id: uuid.UUID) -> str:
    """What an organization named after an erased person is called instead."""
    return f"Organization {org_id.hex[:8]}"


async def forget_default_names(
    *, db: AsyncSession, org_ids: list[uuid.UUID], display_name: str, context: AuditContext
) -> list[uuid.UUID]:
    """Give the organizations among `org_ids` that still carry the name or slug registration
    built from `display_name` a neutral one ("Organization 1a2b3c4d"); return their ids. For
    erasure: the organizations outlive the person, the name must not."""
    personal = default_name(display_name)
    renamed = []
    orgs = await db.scalars(
        select(Organization).where(Organization.id.in_(org_ids)).order_by(Organization.id)
    )
    for org in orgs.all():
        neutral = neutral_name(org.id)
        changed: dict[str, str] = {}
        if org.name == personal:
            changed["name"] = org.name = neutral
        if org.slug.rsplit("-", 1)[0] == _slug_base(personal):
            changed["slug"] = org.slug = slugify(neutral)
        if not changed:
            continue
        renamed.append(org.id)
        await db.flush()
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.ORG_UPDATE,
            org_id=org.id,
            resource_type="organization",
            resource_id=org.id,
            details={**changed, "reason": "member_erased"},
        )
    return renamed


def current_org(principal: Principal) -> uuid.UUID:
    """The organization the caller acts in, or NotFound when they act in none."""
    if principal.org_id is None:
        raise NotFound("no current organization")
    return principal.org_id


async def list_my_organizations(*, db: AsyncSession, principal: Principal) -> list[MyOrganization]:
    rows = await db.execute(
        select(Organization.id, Organization.name, Organization.slug, Membership.role)
        .join(Membership, Membership.org_id == Organization.id)
        .where(Membership.user_id == principal.user_id)
        .order_by(Membership.created_at, Organization.id)
    )
    return [MyOrganization(r.id, r.name, r.slug, Role(r.role)) for r in rows]


async def get_my_organization(
    *, db: AsyncSession, principal: Principal, org_id: uuid.UUID
) -> MyOrganization:
    """One of the caller's organizations, or NotFound (also when they are not a member)."""
    for org in await list_my_organizations(db=db, principal=principal):
        if org.org_id == org_id:
            return org
    raise NotFound("organization not found")


async def create_organization(
    *, db: AsyncSession, principal: Principal, context: AuditContext, name: str
) -> Organization:
    """Create an organization owned by the caller. The transaction's tenant becomes the new
    organization so the row-level security checks admit the inserts."""
    if principal.kind != "session":
        raise Forbidden("organizations are created by signed-in users", code="session_required")
    org = Organization(id=uuid.uuid4(), name=name, slug=slugify(name))
    await set_tenant(db, org_id=org.id, user_id=principal.user_id)
    db.add(org)
    await db.flush()
    db.add(Membership(org_id=org.id, user_id=principal.user_id, role=Role.OWNER.value))
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.ORG_CREATE,
        org_id=org.id,
        resource_type="organization",
        resource_id=org.id,
    )
    return org


async def get_current_organization(*, db: AsyncSession, principal: Principal) -> Organization:
    org_id = current_org(principal)
    org = (await db.execute(select(Organization).where(Organization.id == org_id))).scalar()
    if org is None:
        raise NotFound("organization not found")
    return org


async def rename_organization(
    *, db: AsyncSession, principal: Principal, context: AuditContext, name: str
) -> Organization:
    org = await get_current_organization(db=db, principal=principal)
    old = org.name
    org.name = name
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.ORG_UPDATE,
        org_id=org.id,
        resource_type="organization",
        resource_id=org.id,
        details={"field": "name", "old": old, "new": name},
    )
    return org


async def list_members(*, db: AsyncSession, principal: Principal) -> list[Member]:
    org_id = current_org(principal)
    rows = await db.execute(
        select(User.id, User.email, User.display_name, Membership.role, Membership.created_at)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.org_id == org_id)
        .order_by(Membership.created_at, User.id)
    )
    return [Member(r.id, r.email, r.display_name, Role(r.role), r.created_at) for r in rows]


async def change_role(
    *, db: AsyncSession, principal: Principal, context: AuditContext, user_id: uuid.UUID, role: Role
) -> Member:
    org_id = current_org(principal)
    membership = await _locked_membership(db, org_id, user_id)
    current = Role(membership.role)
    ensure_may_grant(principal, role)
    if current is Role.OWNER and principal.role is not Role.OWNER:
        raise Forbidden("only an owner can change another owner's role")
    if current is Role.OWNER and role is not Role.OWNER:
        await _ensure_another_owner(db, org_id, user_id)
    membership.role = role.value
    await db.flush()
    revocation.mark(db, user_id)  # their sessions and API keys act at the new role at once
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_ROLE_CHANGE,
        org_id=org_id,
        resource_type="user",
        resource_id=user_id,
        details={"from": current.value, "to": role.value},
    )
    return await _member(db, org_id, user_id)


async def remove_member(
    *, db: AsyncSession, principal: Principal, context: AuditContext, user_id: uuid.UUID
) -> None:
    """Admins remove members; anyone may leave. Owners are removed only by owners."""
    org_id = current_org(principal)
    leaving = user_id == principal.user_id
    if not leaving and not principal.has_role(Role.ADMIN):
        raise Forbidden("this action needs the admin role or higher")
    membership = await _locked_membership(db, org_id, user_id)
    if Role(membership.role) is Role.OWNER:
        if not leaving and principal.role is not Role.OWNER:
            raise Forbidden("only an owner can remove another owner")
        await _ensure_another_owner(db, org_id, user_id)
    await db.delete(membership)
    await db.flush()
    revocation.mark(db, user_id)  # their sessions and API keys here stop at once
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.MEMBER_REMOVE,
        org_id=org_id,
        resource_type="user",
        resource_id=user_id,
        details={"role": membership.role, "left": leaving},
    )


def ensure_may_grant(principal: Principal, role: Role) -> None:
    """Admins grant roles up to their own (invitations, role changes)."""
    if not principal.has_role(Role.ADMIN):
        raise Forbidden("this action needs the admin role or higher")
    if not principal.has_role(role):
        raise Forbidden(f"you cannot grant the {role.value} role", code="role_too_high")


async def _locked_membership(db: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> Membership:
    membership = (
        await db.execute(
            select(Membership)
            .where(Membership.org_id == org_id, Membership.user_id == user_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if membership is None:
        raise NotFound("member not found")
    return membership


async def _ensure_another_owner(db: AsyncSession, org_id: uuid.UUID, leaving: uuid.UUID) -> None:
    """Refuse to leave the organization without an owner. Locks the owner rows so two
    concurrent demotions cannot both pass."""
    owners = (
        await db.execute(
            select(Membership.user_id)
            .where(Membership.org_id == org_id, Membership.role == Role.OWNER.value)
            .with_for_update()
        )
    ).scalars()
    if not [owner for owner in owners if owner != leaving]:
        raise Conflict(
            "an organization must keep at least one owner; make someone else owner first",
            code="last_owner",
        )


async def _member(db: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> Member:
    row = (
        await db.execute(
            select(User.id, User.email, User.display_name, Membership.role, Membership.created_at)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.org_id == org_id, Membership.user_id == user_id)
        )
    ).one()
    return Member(row.id, row.email, row.display_name, Role(row.role), row.created_at)
