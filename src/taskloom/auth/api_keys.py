"""API keys: created by a member for the organization they act in, capped at their role,
shown once, stored as a hash, revocable."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth.models import ApiKey
from taskloom.auth.principal import Principal
from taskloom.auth.tokens import new_api_key
from taskloom.errors import Forbidden, NotFound
from taskloom.orgs.models import Role
from taskloom.sso import policy as sso_policy


def _require_org(principal: Principal) -> uuid.UUID:
    if principal.org_id is None or principal.role is None:
        raise Forbidden(
            "API keys belong to an organization; join one first", code="no_organization"
        )
    return principal.org_id


async def create_api_key(
    *,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    name: str,
    role: Role,
    expires_in_days: int | None,
) -> tuple[ApiKey, str]:
    """Create a key for the current organization; returns the row and the plaintext key."""
    org_id = _require_org(principal)
    if principal.kind != "session":
        raise Forbidden("API keys can only be created by a signed-in user", code="session_required")
    if not principal.has_role(role):
        raise Forbidden("a key cannot have a higher role than its creator", code="role_too_high")
    await sso_policy.check_api_key_creation(db, org_id=org_id, role=principal.role)
    generated = new_api_key()
    key = ApiKey(
        id=uuid.uuid4(),
        org_id=org_id,
        user_id=principal.user_id,
        name=name,
        prefix=generated.prefix,
        key_hash=generated.key_hash,
        role=role.value,
        created_at=datetime.now(UTC),
        expires_at=(datetime.now(UTC) + timedelta(days=expires_in_days))
        if expires_in_days
        else None,
    )
    db.add(key)
    await db.flush()
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.API_KEY_CREATE,
        org_id=org_id,
        resource_type="api_key",
        resource_id=key.id,
        details={"name": name, "role": role.value},
    )
    return key, generated.plaintext


async def list_api_keys(*, db: AsyncSession, principal: Principal) -> list[ApiKey]:
    """The caller's keys in the current organization, newest first."""
    org_id = _require_org(principal)
    rows = await db.execute(
        select(ApiKey)
        .where(ApiKey.user_id == principal.user_id, ApiKey.org_id == org_id)
        .order_by(ApiKey.created_at.desc())
    )
    return list(rows.scalars())


async def get_api_key(*, db: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    """One of the caller's keys in the current organization, or NotFound."""
    org_id = _require_org(principal)
    key = (
        await db.execute(
            select(ApiKey).where(
                ApiKey.id == key_id, ApiKey.user_id == principal.user_id, ApiKey.org_id == org_id
            )
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found")
    return key


async def revoke_api_key(
    *, db: AsyncSession, principal: Principal, context: AuditContext, key_id: uuid.UUID
) -> None:
    org_id = _require_org(principal)
    key = (
        await db.execute(
            select(ApiKey).where(
                ApiKey.id == key_id, ApiKey.user_id == principal.user_id, ApiKey.org_id == org_id
            )
        )
    ).scalar_one_or_none()
    if key is None:
        raise NotFound("API key not found")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    revocation.mark(db, key.user_id)
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.API_KEY_REVOKE,
        org_id=org_id,
        resource_type="api_key",
        resource_id=key.id,
    )
