"""Where a password session may act: the rules of SSO-required organizations (issue 23), said
once for sign-in, switching organization and API keys.

An organization with `sso_required` accepts the sessions that single sign-on started through a
provider with a group mapping into it. A password session (one without an `sso_sessions` row)
is refused there, at sign-in and at /auth/switch-org, except the organization's break-glass
user's while that person is an owner (each such use is audited). API keys keep working; only
admins create new ones there. docs/SSO.md, "SSO-required organizations".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Forbidden
from taskloom.orgs.models import Membership, Organization, Role
from taskloom.sso.models import SsoGroupMapping, SsoProvider, SsoSession

PROVIDERS_PATH = "/auth/oidc/providers"
_HOW = f"sign in with single sign-on instead (the providers are listed at {PROVIDERS_PATH})"


@dataclass(frozen=True)
class Entry:
    """A person's membership of one organization, as the SSO rules see it."""

    org_id: uuid.UUID
    org_name: str
    role: Role
    sso_required: bool
    # This person is the organization's break-glass user and (still) an owner.
    break_glass: bool
    # The provider of the session at hand, when single sign-on started it.
    sso_provider_id: uuid.UUID | None = None


def admit_password(entry: Entry, *, chosen: bool = True) -> bool:
    """May a password session act in the entry's organization? False: freely; True: as its
    break-glass owner (audit it); else the 403 `sso_required`. `chosen`: the person named the
    organization (otherwise it is the first of theirs, so all of them require SSO)."""
    if not entry.sso_required:
        return False
    if entry.break_glass:
        return True
    raise _refusal(entry, chosen=chosen)


async def admit_switch(database: Database, entry: Entry) -> bool:
    """As `admit_password`, for a session moving into the entry's organization: a session that
    single sign-on started is admitted when its provider (enabled) maps into it."""
    provider = entry.sso_provider_id
    if not entry.sso_required or provider is None:
        return admit_password(entry)
    async with system_transaction(database) as db:
        mapped = await provider_maps_into(db, org_id=entry.org_id, provider_id=provider)
    return False if mapped else admit_password(entry)


def _refusal(entry: Entry, *, chosen: bool) -> Forbidden:
    if chosen:
        message = f"the organization {entry.org_name!r} requires single sign-on: {_HOW}"
    else:
        message = f"every organization you belong to requires single sign-on: {_HOW}"
    return Forbidden(message, code="sso_required")


def _break_glass(user_id: uuid.UUID) -> ColumnElement[bool]:
    return Organization.sso_break_glass_user_id.is_not_distinct_from(user_id) & (
        Membership.role == Role.OWNER.value
    )


async def password_entry(
    db: AsyncSession, *, user_id: uuid.UUID, org_id: uuid.UUID | None
) -> Entry | None:
    """The organization a password sign-in opens its session in: `org_id`, or else the first
    membership a password may act in (those that require single sign-on last, so a refusal
    means all do); None when the person is not a member of `org_id`, or of any organization.
    One query, which share-locks the organization's row: switching SSO on waits for a sign-in
    in flight, whose session its sweep then sees (sso/required.py)."""
    break_glass = _break_glass(user_id)
    refused = Organization.sso_required & ~break_glass
    query = (
        select(
            Membership.org_id,
            Organization.name,
            Membership.role,
            Organization.sso_required,
            break_glass.label("break_glass"),
        )
        .join(Organization, Organization.id == Membership.org_id)
        .where(Membership.user_id == user_id)
        .order_by(refused, Organization.sso_required, Membership.created_at, Membership.org_id)
        .limit(1)
        .with_for_update(read=True, of=Organization)
    )
    if org_id is not None:
        query = query.where(Membership.org_id == org_id)
    row = (await db.execute(query)).first()
    if row is None:
        return None
    return Entry(row.org_id, row.name, Role(row.role), row.sso_required, row.break_glass)


async def switch_entry(
    db: AsyncSession, *, user_id: uuid.UUID, session_id: uuid.UUID, org_id: uuid.UUID
) -> Entry | None:
    """The person's membership of `org_id` and the provider of their session (None for a
    password session), or None when they are not a member. The caller's tenant transaction
    must be scoped to `org_id`: the organization's row is share-locked, as at sign-in."""
    provider = (
        select(SsoSession.provider_id)
        .where(SsoSession.session_id == session_id)
        .limit(1)
        .scalar_subquery()
    )
    row = (
        await db.execute(
            select(
                Organization.name,
                Membership.role,
                Organization.sso_required,
                _break_glass(user_id).label("break_glass"),
                provider.label("provider_id"),
            )
            .join(Organization, Organization.id == Membership.org_id)
            .where(Membership.user_id == user_id, Membership.org_id == org_id)
            .with_for_update(read=True, of=Organization)
        )
    ).first()
    if row is None:
        return None
    return Entry(
        org_id, row.name, Role(row.role), row.sso_required, row.break_glass, row.provider_id
    )


async def provider_maps_into(
    db: AsyncSession, *, org_id: uuid.UUID, provider_id: uuid.UUID | None = None
) -> bool:
    """Whether an enabled provider (`provider_id`, or any) has a group mapping into `org_id`.
    In a system transaction: the application role has no privilege on providers and mappings."""
    mapped = (
        select(SsoGroupMapping.id)
        .join(SsoProvider, SsoProvider.id == SsoGroupMapping.provider_id)
        .where(SsoGroupMapping.org_id == org_id, SsoProvider.enabled)
    )
    if provider_id is not None:
        mapped = mapped.where(SsoProvider.id == provider_id)
    return bool(await db.scalar(select(exists(mapped))))


async def check_api_key_creation(db: AsyncSession, *, org_id: uuid.UUID, role: Role | None) -> None:
    """In an SSO-required organization only admins create API keys (for automation: the CLI,
    CI); keys made before keep working. In the caller's tenant transaction."""
    if role is not None and role.at_least(Role.ADMIN):
        return
    required = await db.scalar(select(Organization.sso_required).where(Organization.id == org_id))
    if required:
        raise Forbidden(
            "this organization requires single sign-on: only admins create API keys here",
            code="sso_required_admin_keys",
        )
