"""The organization setting "SSO required" and its break-glass owner (PATCH /api/org): only
owners change them; switching it on needs an enabled provider mapped into the organization
(else nobody could sign in) and signs out every password session there but the break-glass
owner's. The rules it enables are in sso/policy.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum

from sqlalchemy import exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth.models import Session
from taskloom.auth.principal import Principal
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Conflict, Forbidden, ValidationFailed
from taskloom.orgs.models import Membership, Organization, Role
from taskloom.runtime import Runtime
from taskloom.sso.models import SsoSession
from taskloom.sso.policy import provider_maps_into


class Keep(Enum):
    """A field the request did not name: left as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


async def change(
    *,
    runtime: Runtime,
    principal: Principal,
    context: AuditContext,
    sso_required: bool | Keep = KEEP,
    break_glass_user_id: uuid.UUID | Keep | None = KEEP,
) -> None:
    """Set the current organization's SSO requirement and/or break-glass owner (owners only).

    System transaction: the check reads providers and mappings, and the sweep revokes other
    people's sessions, neither of which the application role may touch. The organization's row
    is locked first, so a password sign-in in flight (which share-locks it) either commits
    before the sweep, which then revokes its session, or waits and is refused."""
    if not principal.has_role(Role.OWNER):
        raise Forbidden("single sign-on settings are changed by owners only")
    org_id = principal.current_org()
    async with system_transaction(runtime.database) as db:
        org = (
            await db.execute(
                select(Organization).where(Organization.id == org_id).with_for_update()
            )
        ).scalar_one()
        if (
            sso_required is True
            and not org.sso_required
            and not await provider_maps_into(db, org_id=org_id)
        ):
            raise Conflict(
                "no enabled single sign-on provider has a group mapping into this organization: "
                "requiring single sign-on now would lock everyone out (an instance administrator "
                "maps a group first: POST /api/admin/sso/providers/{slug}/mappings)",
                code="sso_not_configured",
            )
        if break_glass_user_id is not KEEP:
            if break_glass_user_id is not None and not await _is_owner(
                db, org_id=org_id, user_id=break_glass_user_id
            ):
                raise ValidationFailed(
                    "the break-glass user must be an owner of this organization",
                    code="break_glass_not_owner",
                )
            org.sso_break_glass_user_id = break_glass_user_id
        if sso_required is not KEEP:
            org.sso_required = sso_required
        await db.flush()
        swept = await _sweep(db, org) if org.sso_required else set()
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.ORG_SSO_REQUIRED,
            org_id=org_id,
            resource_type="organization",
            resource_id=org_id,
            details={
                "sso_required": org.sso_required,
                "break_glass_user_id": (
                    str(org.sso_break_glass_user_id) if org.sso_break_glass_user_id else None
                ),
                "sessions_revoked": len(swept),
            },
        )
    await revocation.publish(runtime, swept)  # committed: their access tokens stop now


async def _is_owner(db: AsyncSession, *, org_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    found = await db.scalar(
        select(Membership.id).where(
            Membership.org_id == org_id,
            Membership.user_id == user_id,
            Membership.role == Role.OWNER.value,
        )
    )
    return found is not None


async def _sweep(db: AsyncSession, org: Organization) -> set[uuid.UUID]:
    """Revoke every live password session acting in the organization, except the break-glass
    owner's (while an owner); return whose."""
    exempt = org.sso_break_glass_user_id
    if exempt is not None and not await _is_owner(db, org_id=org.id, user_id=exempt):
        exempt = None
    now = datetime.now(UTC)
    revoked = await db.execute(
        update(Session)
        .where(
            Session.org_id == org.id,
            Session.revoked_at.is_(None),
            Session.expires_at > now,
            Session.user_id.is_distinct_from(exempt),
            ~exists().where(SsoSession.session_id == Session.id),
        )
        .values(revoked_at=now, revoked_reason="sso_required")
        .returning(Session.user_id)
    )
    return set(revoked.scalars())
