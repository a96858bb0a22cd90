"""Global feature flags and their overrides.

Global flags are changed by instance administrators (`users.is_superuser`) only, and only on the
privileged role: the application role may read `feature_flags` but not write it (its model
declares `app_access=AppAccess.READ_ONLY`, db/rls.py), so a bug in an org-facing route cannot
change a flag for every tenant. Their audit rows go to the instance chain.

Organization admins set overrides in their own organization on the request's tenant-scoped
transaction (RLS requires org_id = the current org). Instance administrators may set them for any
organization or user on the privileged role. An override goes to its organization's audit chain
(org-less user overrides to the instance chain). One override per scope: setting one replaces
the previous one. Callers invalidate the evaluation cache after commit (evaluation.invalidate).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.models import User
from taskloom.auth.principal import Principal
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Conflict, Forbidden, NotFound
from taskloom.flags.models import FeatureFlag, FeatureFlagOverride
from taskloom.flags.schemas import FlagCreate, FlagUpdate, OverrideOut, OverrideSet
from taskloom.orgs.models import Membership, Organization

RESOURCE = "feature_flag"


def require_superuser(principal: Principal) -> None:
    """Forbidden unless the caller is an instance administrator (a signed-in person; API keys
    never carry instance administration)."""
    if not principal.is_superuser:
        raise Forbidden(
            "only instance administrators (superusers) may manage global feature flags; "
            "organization admins may set overrides with /api/flags/{key}/overrides",
            code="superuser_required",
        )


def _current_org(principal: Principal) -> uuid.UUID:
    if principal.org_id is None:
        raise NotFound("no current organization")
    return principal.org_id


async def get_flag(*, db: AsyncSession, key: str, for_update: bool = False) -> FeatureFlag:
    """The flag, or NotFound."""
    query = select(FeatureFlag).where(FeatureFlag.key == key)
    flag = (await db.execute(query.with_for_update() if for_update else query)).scalar_one_or_none()
    if flag is None:
        raise NotFound(f"no feature flag {key!r}")
    return flag


async def list_flags(*, db: AsyncSession) -> list[FeatureFlag]:
    return list((await db.execute(select(FeatureFlag).order_by(FeatureFlag.key))).scalars())


# --- global flags (instance administrators, privileged role) -------------------------------------


async def _audit_flag(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    key: str,
    details: dict[str, Any],
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=None,  # a global flag belongs to no organization: the instance chain
        resource_type=RESOURCE,
        resource_id=key,
        details=details,
    )


async def create_flag(
    *, database: Database, principal: Principal, context: AuditContext, body: FlagCreate
) -> FeatureFlag:
    """Create a global flag. System transaction: the application role cannot write flags."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = FeatureFlag(
            id=uuid.uuid4(),
            key=body.key,
            description=body.description,
            default_enabled=body.default_enabled,
            rollout_percentage=body.rollout_percentage,
            created_by=principal.user_id,
        )
        db.add(flag)
        try:
            async with db.begin_nested():
                await db.flush()
        except IntegrityError:
            raise Conflict(f"a feature flag {body.key!r} already exists") from None
        await db.refresh(flag)
        await _audit_flag(
            db,
            context,
            AuditAction.FLAG_CREATE,
            flag.key,
            {
                "default_enabled": flag.default_enabled,
                "rollout_percentage": flag.rollout_percentage,
            },
        )
    return flag


async def update_flag(
    *,
    database: Database,
    principal: Principal,
    context: AuditContext,
    key: str,
    body: FlagUpdate,
) -> FeatureFlag:
    """Change a flag's description, default or rollout. System transaction (see create_flag)."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = await get_flag(db=db, key=key, for_update=True)
        changes: dict[str, Any] = {}
        for field in sorted(body.model_fields_set):
            before, after = getattr(flag, field), getattr(body, field)
            if before == after:
                continue
            setattr(flag, field, after)
            # The description is free text: say that it changed, not what it says.
            changes[field] = True if field == "description" else {"from": before, "to": after}
        if changes:
            await db.flush()
            await db.refresh(flag)
            await _audit_flag(db, context, AuditAction.FLAG_UPDATE, key, {"changed": changes})
    return flag


async def delete_flag(
    *, database: Database, principal: Principal, context: AuditContext, key: str
) -> None:
    """Delete a flag and (by cascade) every override of it, in every organization."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = await get_flag(db=db, key=key, for_update=True)
        overrides = (
            await db.execute(
                select(FeatureFlagOverride.id).where(FeatureFlagOverride.flag_id == flag.id)
            )
        ).all()
        await db.delete(flag)
        await db.flush()
        await _audit_flag(
            db, context, AuditAction.FLAG_DELETE, key, {"overrides_removed": len(overrides)}
        )


# --- overrides -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    org_id: uuid.UUID | None
    user_id: uuid.UUID | None

    def where(self) -> ColumnElement[bool]:
        o = FeatureFlagOverride
        org = o.org_id.is_(None) if self.org_id is None else o.org_id == self.org_id
        user = o.user_id.is_(None) if self.user_id is None else o.user_id == self.user_id
        return and_(org, user)

    def describe(self) -> dict[str, Any]:
        return {
            "scope": "org" if self.user_id is None else "user",
            "org_id": str(self.org_id) if self.org_id else None,
            "user_id": str(self.user_id) if self.user_id else None,
        }


async def _list_overrides(
    db: AsyncSession, flag: FeatureFlag, org_id: uuid.UUID | None
) -> list[OverrideOut]:
    query = select(FeatureFlagOverride).where(FeatureFlagOverride.flag_id == flag.id)
    if org_id is not None:
        query = query.where(FeatureFlagOverride.org_id == org_id)
    rows = await db.execute(query.order_by(FeatureFlagOverride.created_at, FeatureFlagOverride.id))
    return [OverrideOut.of(row, flag.key) for row in rows.scalars()]


async def _replace_override(
    db: AsyncSession,
    *,
    flag: FeatureFlag,
    scope: Scope,
    body: OverrideSet,
    actor: uuid.UUID,
    context: AuditContext,
) -> FeatureFlagOverride:
    # Serialize setters of one scope, so two concurrent PUTs cannot leave two overrides.
    await db.execute(
        text("select pg_advisory_xact_lock(hashtextextended(:k, 0))"),
        {"k": f"taskloom.flags:{flag.id}:{scope.org_id}:{scope.user_id}"},
    )
    replaced = await db.execute(
        delete(FeatureFlagOverride)
        .where(FeatureFlagOverride.flag_id == flag.id, scope.where())
        .returning(FeatureFlagOverride.id)
    )
    row = FeatureFlagOverride(
        id=uuid.uuid4(),
        flag_id=flag.id,
        org_id=scope.org_id,
        user_id=scope.user_id,
        enabled=body.enabled,
        reason=body.reason,
        expires_at=body.expires_at,
        created_by=actor,
    )
    db.add(row)
    await db.flush()
    await db.refresh(row)
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.FLAG_OVERRIDE_SET,
        org_id=scope.org_id,
        resource_type=RESOURCE,
        resource_id=row.id,
        details={
            "flag": flag.key,
            **scope.describe(),
            "enabled": row.enabled,
            "expires_at": row.expires_at.isoformat() if row.expires_at else None,
            "replaced": [str(i) for i in replaced.scalars()],
        },
    )
    return row


async def _delete_overrides(
    db: AsyncSession, *, flag: FeatureFlag, where: ColumnElement[bool], context: AuditContext
) -> None:
    o = FeatureFlagOverride
    removed = (
        await db.execute(
            delete(o).where(o.flag_id == flag.id, where).returning(o.id, o.org_id, o.user_id)
        )
    ).all()
    if not removed:
        raise NotFound(f"no such override of {flag.key!r}")
    for row in removed:
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.FLAG_OVERRIDE_DELETE,
            org_id=row.org_id,
            resource_type=RESOURCE,
            resource_id=row.id,
            details={"flag": flag.key, **Scope(row.org_id, row.user_id).describe()},
        )


async def _require_member(db: AsyncSession, *, org_id: uuid.UUID, user_id: uuid.UUID) -> None:
    member = await db.execute(
        select(exists().where(Membership.org_id == org_id, Membership.user_id == user_id))
    )
    if not member.scalar():
        raise NotFound("no such member in this organization")


# --- overrides in the current organization (org admins, tenant transaction) ----------------------


async def list_org_overrides(
    *, db: AsyncSession, principal: Principal, key: str
) -> list[OverrideOut]:
    """The current organization's overrides of the flag (org-wide and its members')."""
    flag = await get_flag(db=db, key=key)
    return await _list_overrides(db, flag, _current_org(principal))


async def set_org_override(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    key: str,
    user_id: uuid.UUID | None,
    body: OverrideSet,
) -> OverrideOut:
    """Set the org-wide override (user_id None) or a member's override in the current
    organization. NotFound if the user is not a member of it."""
    org_id = _current_org(principal)
    flag = await get_flag(db=db, key=key)
    if user_id is not None:
        await _require_member(db, org_id=org_id, user_id=user_id)
    row = await _replace_override(
        db,
        flag=flag,
        scope=Scope(org_id, user_id),
        body=body,
        actor=principal.user_id,
        context=context,
    )
    return OverrideOut.of(row, flag.key)


async def delete_org_override(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    key: str,
    user_id: uuid.UUID | None,
) -> None:
    """Remove the org-wide override (user_id None) or a member's, in the current organization."""
    flag = await get_flag(db=db, key=key)
    scope = Scope(_current_org(principal), user_id)
    await _delete_overrides(db, flag=flag, where=scope.where(), context=context)


# --- overrides anywhere (instance administrators, privileged role) -------------------------------


async def list_all_overrides(
    *, database: Database, principal: Principal, key: str
) -> list[OverrideOut]:
    """Every override of the flag in every organization. System transaction: across tenants."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = await get_flag(db=db, key=key)
        return await _list_overrides(db, flag, None)


async def admin_set_override(
    *,
    database: Database,
    principal: Principal,
    context: AuditContext,
    key: str,
    org_id: uuid.UUID | None,
    user_id: uuid.UUID | None,
    body: OverrideSet,
) -> OverrideOut:
    """Set an override for any organization, any member of one, or a user everywhere (org_id
    None). System transaction: the target is usually not the caller's organization."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = await get_flag(db=db, key=key)
        if org_id is not None and await db.get(Organization, org_id) is None:
            raise NotFound("no such organization")
        if org_id is not None and user_id is not None:
            await _require_member(db, org_id=org_id, user_id=user_id)
        elif user_id is not None and await db.get(User, user_id) is None:
            raise NotFound("no such user")
        row = await _replace_override(
            db,
            flag=flag,
            scope=Scope(org_id, user_id),
            body=body,
            actor=principal.user_id,
            context=context,
        )
        return OverrideOut.of(row, flag.key)


async def admin_delete_override(
    *,
    database: Database,
    principal: Principal,
    context: AuditContext,
    key: str,
    override_id: uuid.UUID,
) -> None:
    """Remove any override of the flag by id. System transaction (see admin_set_override)."""
    require_superuser(principal)
    async with system_transaction(database) as db:
        flag = await get_flag(db=db, key=key)
        await _delete_overrides(
            db, flag=flag, where=FeatureFlagOverride.id == override_id, context=context
        )
