"""Accounts created by operators (CLI) rather than by self-registration."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import exists, select

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.models import User
from taskloom.auth.service import create_user_with_org
from taskloom.db.tenancy import system_transaction, tenant_transaction
from taskloom.runtime import Runtime


@dataclass(frozen=True)
class CreatedAccount:
    user_id: str
    email: str
    org_id: str | None
    org_name: str | None


async def create_account(
    *,
    runtime: Runtime,
    email: str,
    password: str,
    display_name: str,
    org_name: str | None,
    is_superuser: bool,
    context: AuditContext,
) -> CreatedAccount:
    """Create a user (and an organization they own, if named) and audit it."""
    async with tenant_transaction(runtime.database, org_id=None, user_id=None) as db:
        user, org = await create_user_with_org(
            runtime=runtime,
            db=db,
            email=email,
            password=password,
            display_name=display_name,
            org_name=org_name,
            is_superuser=is_superuser,
        )
        details = {"superuser": is_superuser, "source": "cli"}
        if org is not None:
            await audit.record(
                session=db,
                context=replace(context, actor_user_id=user.id),
                action=AuditAction.USER_CREATE,
                org_id=org.id,
                resource_type="user",
                resource_id=user.id,
                details=details,
            )
    if org is None:
        # A user without an organization: the event goes to the instance chain.
        async with system_transaction(runtime.database) as system_db:
            await audit.record(
                session=system_db,
                context=context,
                action=AuditAction.USER_CREATE,
                org_id=None,
                resource_type="user",
                resource_id=user.id,
                details=details,
            )
    return CreatedAccount(
        user_id=str(user.id),
        email=user.email,
        org_id=str(org.id) if org else None,
        org_name=org.name if org else None,
    )


async def instance_has_users(*, runtime: Runtime) -> bool:
    """Whether anyone has an account yet. System transaction: a question about the instance."""
    async with system_transaction(runtime.database) as db:
        return bool((await db.execute(select(exists().where(User.id.isnot(None))))).scalar())
