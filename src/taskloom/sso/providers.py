"""Identity providers and their group mappings, as instance administrators configure them
(/api/admin/sso), and a provider as the sign-in flow reads it.

The application role has no privilege on these tables: every function here uses the system
transaction. The client secret is stored encrypted (crypto.py, bound to the provider's row) and
never returned, logged or audited; writes are audited in the instance chain, a mapping's in the
chain of the organization it grants a role in.
"""

from __future__ import annotations

import ipaddress
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth.models import Session
from taskloom.auth.principal import Principal
from taskloom.config import Settings
from taskloom.crypto import CredentialCipher
from taskloom.db.engine import Database
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Conflict, Forbidden, NotFound, ValidationFailed
from taskloom.net import AddressPolicy, TargetNotAllowed
from taskloom.orgs.models import Organization
from taskloom.sso import oidc
from taskloom.sso.models import MAPPABLE_ROLES, SsoGroupMapping, SsoProvider, SsoSession
from taskloom.sso.schemas import MappingCreate, ProviderCreate, ProviderOut, ProviderUpdate

CALLBACK_PATH = "/auth/oidc/{slug}/callback"


@dataclass(frozen=True)
class ProviderView:
    """A provider as the flow uses it: plain values, the secret decrypted."""

    id: uuid.UUID
    slug: str
    display_name: str
    enabled: bool
    jit: bool
    groups_claim: str | None
    email_verified_claim: str
    verified_email_domains: list[str]
    client: oidc.ClientConfig


def require_instance_admin(principal: Principal) -> None:
    if not principal.is_superuser:
        raise Forbidden(
            "only instance administrators (superusers) may configure sign-in providers",
            code="superuser_required",
        )


def redirect_uri(settings: Settings, base_url: str, slug: str) -> str:
    """The callback URL to register at the provider: PUBLIC_URL's, else the request's base."""
    base = (settings.public_url or base_url).rstrip("/")
    return base + CALLBACK_PATH.format(slug=slug)


def provider_out(provider: SsoProvider, *, base_url: str, settings: Settings) -> ProviderOut:
    return ProviderOut(
        id=provider.id,
        slug=provider.slug,
        display_name=provider.display_name,
        issuer=provider.issuer,
        client_id=provider.client_id,
        scopes=provider.scopes,
        groups_claim=provider.groups_claim,
        enabled=provider.enabled,
        jit=provider.jit,
        email_verified_claim=provider.email_verified_claim,
        verified_email_domains=provider.verified_email_domains,
        algorithms=provider.algorithms,
        redirect_uri=redirect_uri(settings, base_url, provider.slug),
        created_at=provider.created_at,
        updated_at=provider.updated_at,
    )


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"body.{field}: {message}",
        details={"errors": [{"loc": ["body", field], "message": message}]},
    )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def check_issuer(settings: Settings, issuer: str) -> str:
    """The issuer if the flow may use it: an https URL without query, fragment or credentials
    (plain http only outside production, for a loopback host or one OUTBOUND_ALLOWED_HOSTS
    names), whose host the address guard would let us reach."""
    try:
        url = httpx.URL(issuer)
    except httpx.InvalidURL:
        raise _invalid("issuer", "not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise _invalid("issuer", "must be an absolute https:// URL")
    if url.query or url.fragment or url.userinfo:
        raise _invalid("issuer", "must not have a query, a fragment or credentials")
    policy = AddressPolicy.from_setting(settings.outbound_allowed_hosts)
    if url.scheme == "http":
        allowed = _is_loopback(url.host) or url.host.lower() in policy.hostnames
        try:
            address = ipaddress.ip_address(url.host)
            allowed = allowed or any(address in net for net in policy.networks)
        except ValueError:
            pass
        if settings.is_production or not allowed:
            raise _invalid(
                "issuer",
                "must use https (plain http only outside production, for a loopback host or "
                "one OUTBOUND_ALLOWED_HOSTS allows)",
            )
    try:
        await policy.resolve_allowed(url.host, url.port or (443 if url.scheme == "https" else 80))
    except TargetNotAllowed as refused:
        raise _invalid("issuer", str(refused)) from None
    except OSError:
        pass  # not resolvable yet: each sign-in resolves and checks again at connect time
    return issuer


async def _audit(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    provider: SsoProvider,
    *,
    org_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=org_id,
        resource_type="sso_provider",
        resource_id=provider.slug,
        details={"provider": provider.slug, **(details or {})},
    )


async def _get(db: AsyncSession, slug: str, *, for_update: bool = False) -> SsoProvider:
    query = select(SsoProvider).where(SsoProvider.slug == slug)
    found = (await db.execute(query.with_for_update() if for_update else query)).scalar()
    if found is None:
        raise NotFound("no such sign-in provider", code="sso_unknown_provider")
    return found


_PUBLIC_FIELDS = (
    "display_name",
    "issuer",
    "client_id",
    "scopes",
    "groups_claim",
    "enabled",
    "jit",
    "email_verified_claim",
    "verified_email_domains",
    "algorithms",
)


async def create_provider(
    *,
    database: Database,
    cipher: CredentialCipher,
    settings: Settings,
    principal: Principal,
    context: AuditContext,
    body: ProviderCreate,
) -> SsoProvider:
    require_instance_admin(principal)
    await check_issuer(settings, body.issuer)
    async with system_transaction(database) as db:
        provider = SsoProvider(
            id=uuid.uuid4(),
            slug=body.slug,
            **{name: getattr(body, name) for name in _PUBLIC_FIELDS},
        )
        provider.secret_key_id, provider.secret_encrypted = cipher.encrypt(
            {"client_secret": body.client_secret}, bound_to=provider.secret_bound_to()
        )
        db.add(provider)
        try:
            async with db.begin_nested():
                await db.flush()
        except IntegrityError:
            raise Conflict(
                f"a sign-in provider {body.slug!r} already exists", code="sso_provider_exists"
            ) from None
        await db.refresh(provider)
        await _audit(
            db,
            context,
            AuditAction.SSO_PROVIDER_CREATE,
            provider,
            details={n: getattr(provider, n) for n in ("issuer", "client_id", "enabled", "jit")},
        )
    return provider


async def list_providers(*, database: Database, principal: Principal) -> list[SsoProvider]:
    require_instance_admin(principal)
    async with system_transaction(database) as db:
        rows = await db.execute(select(SsoProvider).order_by(SsoProvider.slug))
        return list(rows.scalars())


async def get_provider(*, database: Database, principal: Principal, slug: str) -> SsoProvider:
    require_instance_admin(principal)
    async with system_transaction(database) as db:
        return await _get(db, slug)


async def update_provider(
    *,
    database: Database,
    cipher: CredentialCipher,
    settings: Settings,
    principal: Principal,
    context: AuditContext,
    slug: str,
    body: ProviderUpdate,
) -> tuple[SsoProvider, set[uuid.UUID]]:
    """Change the fields given; a `client_secret` replaces the stored one (audited as changed,
    never shown). Fields that may not be null refuse null. Disabling the provider signs out
    the sessions it started (returns their people: publish their revocation after this)."""
    require_instance_admin(principal)
    given = body.model_fields_set
    for name in given - {"groups_claim"}:
        if getattr(body, name) is None:
            raise _invalid(name, "may not be null")
    if body.issuer is not None:
        await check_issuer(settings, body.issuer)
    async with system_transaction(database) as db:
        provider = await _get(db, slug, for_update=True)
        old_issuer = provider.issuer
        changes: dict[str, Any] = {}
        for name in sorted(given & set(_PUBLIC_FIELDS)):
            before, after = getattr(provider, name), getattr(body, name)
            if before != after:
                setattr(provider, name, after)
                changes[name] = {"from": before, "to": after}
        if body.client_secret is not None:
            provider.secret_key_id, provider.secret_encrypted = cipher.encrypt(
                {"client_secret": body.client_secret}, bound_to=provider.secret_bound_to()
            )
            changes["client_secret"] = "replaced"  # noqa: S105 (what happened, not the value)
        signed_out: set[uuid.UUID] = set()
        if changes:
            provider.updated_at = datetime.now(UTC)
            await db.flush()
            await db.refresh(provider)
            details: dict[str, Any] = {"changes": changes}
            if "enabled" in changes and not provider.enabled:
                signed_out = await _end_sessions(db, provider, "sso_provider_disabled")
                details["sessions_ended"] = len(signed_out)
            await _audit(db, context, AuditAction.SSO_PROVIDER_UPDATE, provider, details=details)
    oidc.forget(old_issuer)
    return provider, signed_out


async def _end_sessions(db: AsyncSession, provider: SsoProvider, reason: str) -> set[uuid.UUID]:
    """Sign out every live session the provider started; returns whose (publish their
    revocation once committed)."""
    ended = await db.execute(
        update(Session)
        .where(
            Session.id.in_(
                select(SsoSession.session_id).where(SsoSession.provider_id == provider.id)
            ),
            Session.revoked_at.is_(None),
        )
        .values(revoked_at=datetime.now(UTC), revoked_reason=reason)
        .returning(Session.user_id)
    )
    return set(ended.scalars())


async def delete_provider(
    *, database: Database, principal: Principal, context: AuditContext, slug: str
) -> set[uuid.UUID]:
    """Delete a provider, its mappings and identities (cascade); its sessions are signed out
    (returns their people: publish their revocation after this). Memberships its mappings
    granted stay, as if made by hand."""
    require_instance_admin(principal)
    async with system_transaction(database) as db:
        provider = await _get(db, slug, for_update=True)
        users = await _end_sessions(db, provider, "sso_provider_deleted")
        await db.delete(provider)
        await db.flush()
        await _audit(
            db,
            context,
            AuditAction.SSO_PROVIDER_DELETE,
            provider,
            details={"sessions_ended": len(users)},
        )
    oidc.forget(provider.issuer)
    return users


# --- group mappings ------------------------------------------------------------------------------


async def create_mapping(
    *,
    database: Database,
    principal: Principal,
    context: AuditContext,
    slug: str,
    body: MappingCreate,
) -> SsoGroupMapping:
    require_instance_admin(principal)
    if body.role == "owner":
        raise ValidationFailed(
            "body.role: a group never grants owner (at most admin)", code="role_not_mappable"
        )
    if body.role not in MAPPABLE_ROLES:
        raise _invalid("role", f"must be one of {', '.join(MAPPABLE_ROLES)}")
    async with system_transaction(database) as db:
        provider = await _get(db, slug)
        if await db.get(Organization, body.org_id) is None:
            raise ValidationFailed("body.org_id: no such organization", code="unknown_organization")
        mapping = SsoGroupMapping(
            id=uuid.uuid4(),
            provider_id=provider.id,
            group_name=body.group,
            org_id=body.org_id,
            role=body.role,
        )
        db.add(mapping)
        try:
            async with db.begin_nested():
                await db.flush()
        except IntegrityError:
            raise Conflict(
                "this provider already maps that group in that organization",
                code="sso_mapping_exists",
            ) from None
        await db.refresh(mapping)
        await _audit_mapping(db, context, AuditAction.SSO_MAPPING_CREATE, provider, mapping)
    return mapping


async def _audit_mapping(
    db: AsyncSession,
    context: AuditContext,
    action: AuditAction,
    provider: SsoProvider,
    mapping: SsoGroupMapping,
) -> None:
    await audit.record(
        session=db,
        context=context,
        action=action,
        org_id=mapping.org_id,  # the organization the mapping grants a role in
        resource_type="sso_mapping",
        resource_id=mapping.id,
        details={"provider": provider.slug, "group": mapping.group_name, "role": mapping.role},
    )


async def list_mappings(
    *, database: Database, principal: Principal, slug: str
) -> list[SsoGroupMapping]:
    require_instance_admin(principal)
    async with system_transaction(database) as db:
        provider = await _get(db, slug)
        rows = await db.execute(
            select(SsoGroupMapping)
            .where(SsoGroupMapping.provider_id == provider.id)
            .order_by(SsoGroupMapping.created_at, SsoGroupMapping.id)
        )
        return list(rows.scalars())


async def organization_names(
    *, database: Database, principal: Principal, org_ids: set[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The names of the organizations mappings grant roles in (the web UI lists them); the
    application role reads only the caller's own organizations."""
    require_instance_admin(principal)
    if not org_ids:
        return {}
    async with system_transaction(database) as db:
        rows = await db.execute(
            select(Organization.id, Organization.name).where(Organization.id.in_(org_ids))
        )
        return {row.id: row.name for row in rows}


async def delete_mapping(
    *,
    database: Database,
    principal: Principal,
    context: AuditContext,
    slug: str,
    mapping_id: uuid.UUID,
) -> None:
    """Delete a mapping. Roles it granted are taken at the person's next sign-in (or refresh
    with offline_access), when no other mapping of the provider still grants one."""
    require_instance_admin(principal)
    async with system_transaction(database) as db:
        provider = await _get(db, slug)
        mapping = await db.get(SsoGroupMapping, mapping_id)
        if mapping is None or mapping.provider_id != provider.id:
            raise NotFound("no such mapping")
        await db.delete(mapping)
        await db.flush()
        await _audit_mapping(db, context, AuditAction.SSO_MAPPING_DELETE, provider, mapping)


# --- as the flow reads a provider ----------------------------------------------------------------


def view_of(cipher: CredentialCipher, provider: SsoProvider) -> ProviderView:
    secret = cipher.decrypt(
        provider.secret_key_id, provider.secret_encrypted, bound_to=provider.secret_bound_to()
    )["client_secret"]
    return ProviderView(
        id=provider.id,
        slug=provider.slug,
        display_name=provider.display_name,
        enabled=provider.enabled,
        jit=provider.jit,
        groups_claim=provider.groups_claim,
        email_verified_claim=provider.email_verified_claim,
        verified_email_domains=list(provider.verified_email_domains),
        client=oidc.ClientConfig(
            issuer=provider.issuer,
            client_id=provider.client_id,
            client_secret=str(secret),
            scopes=list(provider.scopes),
            algorithms=list(provider.algorithms),
        ),
    )


async def provider_for_flow(
    *, database: Database, cipher: CredentialCipher, slug: str
) -> ProviderView:
    """The provider named by the URL (NotFound sso_unknown_provider), enabled or not."""
    async with system_transaction(database) as db:
        return view_of(cipher, await _get(db, slug))


async def provider_by_id(
    *, db: AsyncSession, cipher: CredentialCipher, provider_id: uuid.UUID
) -> ProviderView | None:
    provider = await db.get(SsoProvider, provider_id)
    return view_of(cipher, provider) if provider else None


async def enabled_providers(*, database: Database) -> list[tuple[str, str]]:
    """(slug, display name) of every enabled provider, for the sign-in page and the CLI."""
    async with system_transaction(database) as db:
        rows = await db.execute(
            select(SsoProvider.slug, SsoProvider.display_name)
            .where(SsoProvider.enabled.is_(True))
            .order_by(SsoProvider.display_name, SsoProvider.slug)
        )
        return [(r.slug, r.display_name) for r in rows]
