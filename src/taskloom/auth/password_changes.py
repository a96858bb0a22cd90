"""Changing a password: by the person (with the current one, from a signed-in session) and by an
operator (`taskloom user set-password`). Either way the person's other sessions end at once: a
password change is what someone does when they fear another person knows the old one."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import ratelimit, revocation
from taskloom.auth.models import Session, User
from taskloom.auth.principal import Principal
from taskloom.auth.service import check_password_policy
from taskloom.db.tenancy import system_transaction
from taskloom.errors import BadRequest, NotFound
from taskloom.runtime import Runtime

WRONG_CURRENT_PASSWORD = "the current password is not correct"  # noqa: S105 (a message)


async def _revoke_sessions(
    db: AsyncSession, *, user_id: uuid.UUID, keep: uuid.UUID | None, reason: str
) -> int:
    """Revoke the user's live sessions but `keep`; their refresh tokens die with them (a refresh
    of a revoked session is refused) and so do their access tokens (the person is marked for the
    principal caches: auth/revocation.py)."""
    statement = update(Session).where(Session.user_id == user_id, Session.revoked_at.is_(None))
    if keep is not None:
        statement = statement.where(Session.id != keep)
    result = await db.execute(statement.values(revoked_at=datetime.now(UTC), revoked_reason=reason))
    revocation.mark(db, user_id)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def change_own_password(
    *,
    runtime: Runtime,
    db: AsyncSession,
    principal: Principal,
    current_password: str,
    new_password: str,
    context: AuditContext,
) -> int:
    """Change the signed-in person's password and revoke their other sessions (this one stays);
    returns how many were revoked. A wrong current password counts as a failed sign-in attempt
    of the account and the IP (the same limits, so this form is no way around them)."""
    if principal.session_id is None:
        raise BadRequest("sign in to change your password", code="not_a_session")
    check_password_policy(runtime, new_password)
    user = (await db.execute(select(User).where(User.id == principal.user_id))).scalar_one()
    attempt = await ratelimit.reserve_login(
        redis=runtime.redis,
        settings=runtime.settings,
        keys=runtime.keys,
        email=user.email,
        ip=context.ip,
    )
    try:
        ok = await asyncio.to_thread(runtime.passwords.verify, user.password_hash, current_password)
    except BaseException:
        await attempt.abandoned()
        raise
    if not ok:  # the reservation stays: it is this failure's count
        await _audit_failure(runtime, principal=principal, context=context)
        raise BadRequest(WRONG_CURRENT_PASSWORD, code="invalid_current_password")
    await attempt.succeeded()
    password_hash = await asyncio.to_thread(runtime.passwords.hash, new_password)
    await db.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))
    revoked = await _revoke_sessions(
        db, user_id=user.id, keep=principal.session_id, reason="password_change"
    )
    await _record(
        runtime,
        db,
        org_id=principal.org_id,
        context=context,
        user_id=user.id,
        details={"source": "self", "sessions_revoked": revoked},
    )
    return revoked


async def _audit_failure(runtime: Runtime, *, principal: Principal, context: AuditContext) -> None:
    """Committed on its own: the request's transaction is rolled back by the refusal."""
    async with system_transaction(runtime.database) as db:
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.AUTH_PASSWORD_CHANGE,
            org_id=principal.org_id,
            resource_type="user",
            resource_id=principal.user_id,
            success=False,
            details={"source": "self", "reason": "invalid_current_password"},
        )


async def _record(
    runtime: Runtime,
    db: AsyncSession,
    *,
    org_id: uuid.UUID | None,
    context: AuditContext,
    user_id: uuid.UUID,
    details: dict[str, object],
) -> None:
    """In the organization's chain within `db`; a person in no organization goes to the instance
    chain, which only the system transaction may append to."""
    if org_id is not None:
        await audit.record(
            session=db,
            context=context,
            action=AuditAction.AUTH_PASSWORD_CHANGE,
            org_id=org_id,
            resource_type="user",
            resource_id=user_id,
            details=details,
        )
        return
    async with system_transaction(runtime.database) as system_db:
        await audit.record(
            session=system_db,
            context=context,
            action=AuditAction.AUTH_PASSWORD_CHANGE,
            org_id=None,
            resource_type="user",
            resource_id=user_id,
            details=details,
        )


async def set_password(
    *, runtime: Runtime, email: str, new_password: str, context: AuditContext
) -> int:
    """An operator sets someone's password (`taskloom user set-password`): every session of the
    person is revoked, and the change is audited on the instance chain (an instance operation,
    whichever organizations the person belongs to). Returns how many sessions were revoked.
    System transaction: the person is found by e-mail, outside any tenant."""
    check_password_policy(runtime, new_password)
    password_hash = await asyncio.to_thread(runtime.passwords.hash, new_password)
    async with system_transaction(runtime.database) as db:
        user = (
            await db.execute(select(User).where(func.lower(User.email) == email.strip().lower()))
        ).scalar_one_or_none()
        if user is None:
            raise NotFound(f"no account with the email {email.strip()!r}")
        await db.execute(update(User).where(User.id == user.id).values(password_hash=password_hash))
        revoked = await _revoke_sessions(db, user_id=user.id, keep=None, reason="password_set")
        await audit.record(
            session=db,
            context=replace(context, actor_user_id=None),
            action=AuditAction.AUTH_PASSWORD_CHANGE,
            org_id=None,
            resource_type="user",
            resource_id=user.id,
            details={"source": "cli", "sessions_revoked": revoked},
        )
    await revocation.publish(runtime, {user.id})
    return revoked
