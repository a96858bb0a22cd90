"""Roles from groups: at each SSO sign-in (and each refresh of a session with offline_access),
the provider's group mappings set the person's role in every organization they name.

Per organization O that some mapping of provider P names, `desired` is the highest role among
the mappings whose group is in the person's groups claim (exact string match):

- desired, no membership                  -> membership(role=desired, sso_provider_id=P)
- desired, the membership is owner         -> untouched (a group never grants nor takes owner)
- desired, another membership             -> role := desired, sso_provider_id := P
- no desired, membership granted by P      -> deleted (the person left the group)
- no desired, membership by hand or by another provider -> untouched

Each change is audited in O's chain (member.sso_grant / sso_role_change / sso_revoke).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.orgs.models import Membership, Role
from taskloom.sso.models import SsoGroupMapping


@dataclass(frozen=True)
class RoleChange:
    org_id: uuid.UUID
    before: str | None
    after: str | None


def groups_of(claims: dict[str, Any], claim: str | None) -> list[str] | None:
    """The groups the claims carry (strings, as sent), or None when the claim is absent."""
    if not claim or claim not in claims:
        return None
    value = claims[claim]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value if isinstance(g, str)]
    return []


async def apply_group_roles(
    *,
    db: AsyncSession,
    provider_id: uuid.UUID,
    provider_slug: str,
    user_id: uuid.UUID,
    groups: list[str],
    context: AuditContext,
) -> list[RoleChange]:
    """Set the person's roles from `groups` (system transaction: sign-in comes before any
    tenant); returns what changed."""
    mappings = list(
        (
            await db.execute(
                select(SsoGroupMapping).where(SsoGroupMapping.provider_id == provider_id)
            )
        ).scalars()
    )
    if not mappings:
        return []
    held = set(groups)
    desired: dict[uuid.UUID, tuple[Role, list[str]]] = {}
    for m in mappings:
        desired.setdefault(m.org_id, (Role.VIEWER, []))
        if m.group_name in held:
            best, via = desired[m.org_id]
            role = Role(m.role)
            desired[m.org_id] = (
                role if not via or role.rank > best.rank else best,
                [*via, m.group_name],
            )
    members = {
        m.org_id: m
        for m in (
            await db.execute(
                select(Membership)
                .where(Membership.user_id == user_id, Membership.org_id.in_(desired))
                .with_for_update()
            )
        ).scalars()
    }
    changes: list[RoleChange] = []
    for org_id in sorted(desired, key=str):
        role, via = desired[org_id]
        member = members.get(org_id)
        if via:
            if member is None:
                db.add(
                    Membership(
                        org_id=org_id, user_id=user_id, role=role.value, sso_provider_id=provider_id
                    )
                )
                change = RoleChange(org_id, None, role.value)
            elif member.role == Role.OWNER.value:
                continue
            elif member.role != role.value or member.sso_provider_id != provider_id:
                change = RoleChange(org_id, member.role, role.value)
                member.role, member.sso_provider_id = role.value, provider_id
                if change.before == change.after:  # only the governing provider changed
                    await db.flush()
                    continue
            else:
                continue
        elif member is not None and member.sso_provider_id == provider_id:
            await db.delete(member)
            change = RoleChange(org_id, member.role, None)
        else:
            continue
        await db.flush()
        changes.append(change)
        action = (
            AuditAction.MEMBER_SSO_GRANT
            if change.before is None
            else AuditAction.MEMBER_SSO_REVOKE
            if change.after is None
            else AuditAction.MEMBER_SSO_ROLE_CHANGE
        )
        await audit.record(
            session=db,
            context=context,
            action=action,
            org_id=org_id,
            resource_type="membership",
            resource_id=user_id,
            details={
                "provider": provider_slug,
                "groups": via,
                "from": change.before,
                "to": change.after,
            },
        )
    return changes
