"""Taskloom sessions that single sign-on started: the refresh of one whose provider granted
offline_access (the provider is asked first; a refused grant or a person who left the
organization's groups ends the session), and the provider's logout URL.

Sessions without a provider refresh token are refreshed as any other: their roles were set
from the groups at sign-in, and are set again at the next one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from sqlalchemy import select

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth import service as auth
from taskloom.auth.models import RefreshToken, Session
from taskloom.auth.tokens import sha256_hex
from taskloom.crypto import CredentialKeyError
from taskloom.db.tenancy import system_transaction
from taskloom.errors import Unauthorized
from taskloom.orgs.models import Membership
from taskloom.runtime import Runtime
from taskloom.sso import mappings, oidc, providers
from taskloom.sso.errors import REASONS
from taskloom.sso.models import SsoIdentity, SsoSession
from taskloom.sso.providers import ProviderView

log = structlog.get_logger("taskloom.sso")


@dataclass(frozen=True)
class _Offline:
    session_id: uuid.UUID
    user_id: uuid.UUID
    org_id: uuid.UUID | None
    provider: ProviderView
    subject: str
    refresh_token: str
    id_token: str


def _tokens(runtime: Runtime, row: SsoSession) -> dict[str, Any]:
    return runtime.cipher.decrypt(
        row.tokens_key_id, row.tokens_encrypted, bound_to=row.tokens_bound_to()
    )


async def _offline_session(runtime: Runtime, refresh_token: str) -> _Offline | None:
    """The SSO session behind a live, unused refresh token whose provider granted a refresh
    token; None for anything else (auth.service.refresh answers those)."""
    async with system_transaction(runtime.database) as db:
        row = (
            await db.execute(
                select(SsoSession, Session, SsoIdentity.subject)
                .join(RefreshToken, RefreshToken.session_id == SsoSession.session_id)
                .join(Session, Session.id == SsoSession.session_id)
                .join(SsoIdentity, SsoIdentity.id == SsoSession.identity_id)
                .where(
                    RefreshToken.token_hash == sha256_hex(refresh_token),
                    RefreshToken.used_at.is_(None),
                    Session.revoked_at.is_(None),
                    SsoSession.offline.is_(True),
                )
            )
        ).first()
        if row is None:
            return None
        sso: SsoSession = row.SsoSession
        provider = await providers.provider_by_id(
            db=db, cipher=runtime.cipher, provider_id=sso.provider_id
        )
        try:
            tokens = _tokens(runtime, sso)
        except CredentialKeyError:
            log.warning("sso_session_tokens_unreadable", session_id=str(sso.session_id))
            return None
    if provider is None or not tokens.get("refresh_token"):
        return None
    return _Offline(
        session_id=sso.session_id,
        user_id=sso.user_id,
        org_id=row.Session.org_id,
        provider=provider,
        subject=row.subject,
        refresh_token=str(tokens["refresh_token"]),
        id_token=str(tokens.get("id_token", "")),
    )


async def _end(runtime: Runtime, found: _Offline, reason: str, client: AuditContext) -> None:
    await auth.end_session(runtime=runtime, session_id=found.session_id, reason="sso_" + reason)
    async with system_transaction(runtime.database) as db:
        await audit.record(
            session=db,
            context=AuditContext(
                actor_user_id=found.user_id,
                ip=client.ip,
                user_agent=client.user_agent,
                request_id=client.request_id,
            ),
            action=AuditAction.AUTH_SSO_SESSION_END,
            org_id=found.org_id,
            resource_type="session",
            resource_id=found.session_id,
            details={"provider": found.provider.slug, "reason": reason},
        )


def _ended() -> Unauthorized:
    return Unauthorized(REASONS["sso_session_ended"][1], code="sso_session_ended")


async def refresh(runtime: Runtime, refresh_token: str, client: AuditContext) -> auth.TokenPair:
    """auth.service.refresh, after the provider renewed the session's grant and its groups
    still keep the person in the session's organization (offline_access sessions only)."""
    found = await _offline_session(runtime, refresh_token)
    if found is None:
        return await auth.refresh(runtime=runtime, refresh_token=refresh_token, client=client)
    try:
        # Outside any transaction: the provider may take seconds.
        answer = await oidc.refresh(runtime.settings, found.provider.client, found.refresh_token)
    except oidc.ProviderRefusedGrant as refused:
        await _end(runtime, found, "grant_" + refused.error[:40], client)
        raise _ended() from None
    claims: dict[str, Any] | None = None
    id_token = answer.get("id_token")
    if isinstance(id_token, str):
        claims = await oidc.validate_id_token(
            runtime.settings, found.provider.client, id_token, nonce=None
        )
        if str(claims.get("sub")) != found.subject:
            await _end(runtime, found, "subject_changed", client)
            raise _ended()
    groups_claim = found.provider.groups_claim
    if groups_claim and (claims is None or groups_claim not in claims):
        access = answer.get("access_token")
        info = (
            await oidc.userinfo(runtime.settings, found.provider.client, access)
            if isinstance(access, str)
            else None
        )
        if info and str(info.get("sub")) == found.subject:
            claims = {**(claims or {}), **{k: v for k, v in info.items() if k == groups_claim}}
    if not await _recheck(runtime, found, answer, id_token, claims, client):
        await _end(runtime, found, "left_organization", client)
        raise _ended()
    return await auth.refresh(runtime=runtime, refresh_token=refresh_token, client=client)


async def _recheck(
    runtime: Runtime,
    found: _Offline,
    answer: dict[str, Any],
    id_token: Any,
    claims: dict[str, Any] | None,
    client: AuditContext,
) -> bool:
    """Keep the provider's rotated tokens, set the roles from the groups, and say whether the
    person still belongs to the session's organization."""
    groups = mappings.groups_of(claims or {}, found.provider.groups_claim)
    changed = False
    async with system_transaction(runtime.database) as db:
        sso = (
            await db.execute(select(SsoSession).where(SsoSession.session_id == found.session_id))
        ).scalar_one()
        tokens = {
            "id_token": id_token if isinstance(id_token, str) else found.id_token,
            "refresh_token": answer.get("refresh_token") or found.refresh_token,
        }
        sso.tokens_key_id, sso.tokens_encrypted = runtime.cipher.encrypt(
            tokens, bound_to=sso.tokens_bound_to()
        )
        sso.checked_at = datetime.now(UTC)
        if groups is not None:
            changes = await mappings.apply_group_roles(
                db=db,
                provider_id=found.provider.id,
                provider_slug=found.provider.slug,
                user_id=found.user_id,
                groups=groups,
                context=AuditContext(
                    actor_user_id=found.user_id, ip=client.ip, request_id=client.request_id
                ),
            )
            changed = bool(changes)
            identity = await db.get(SsoIdentity, sso.identity_id)
            if identity is not None:
                identity.groups = groups
        member = (
            found.org_id is None
            or (
                await db.execute(
                    select(Membership.id).where(
                        Membership.user_id == found.user_id, Membership.org_id == found.org_id
                    )
                )
            ).scalar()
            is not None
        )
    if changed:
        await revocation.publish(runtime, {found.user_id})
    return member


async def logout_url(
    runtime: Runtime, *, session_id: uuid.UUID, post_logout_redirect_uri: str
) -> str | None:
    """Where to send the browser to end the provider's session too (RP-initiated logout), for a
    session SSO started, when the provider advertises an end_session_endpoint; else None."""
    async with system_transaction(runtime.database) as db:
        sso = (
            await db.execute(select(SsoSession).where(SsoSession.session_id == session_id))
        ).scalar()
        if sso is None:
            return None
        provider = await providers.provider_by_id(
            db=db, cipher=runtime.cipher, provider_id=sso.provider_id
        )
        try:
            tokens = _tokens(runtime, sso)
        except CredentialKeyError:
            return None
    if provider is None:
        return None
    try:
        discovery = await oidc.discover(runtime.settings, provider.client.issuer)
    except Exception:  # the provider is down: the Taskloom session has ended all the same
        log.warning("sso_logout_discovery_failed", provider=provider.slug)
        return None
    if not discovery.end_session_endpoint:
        return None
    query = urlencode(
        {
            "id_token_hint": tokens.get("id_token", ""),
            "post_logout_redirect_uri": post_logout_redirect_uri,
            "client_id": provider.client.client_id,
            "state": uuid.uuid4().hex,
        }
    )
    separator = "&" if "?" in discovery.end_session_endpoint else "?"
    return discovery.end_session_endpoint + separator + query
