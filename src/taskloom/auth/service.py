"""Registration, sign-in, refresh-token rotation, sign-out and request authentication.

Resolving credentials into a principal (sign-in, refresh, API-key lookup) happens before any
tenant is known, so those functions use the privileged `system` transaction and say so. Every
other function runs in the caller's tenant-scoped transaction under row-level security.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import ratelimit, revocation
from taskloom.auth.models import ApiKey, RefreshToken, Session, User
from taskloom.auth.principal import Principal
from taskloom.auth.tokens import (
    AccessClaims,
    issue_access_token,
    new_refresh_token,
    sha256_hex,
)
from taskloom.config import Registration
from taskloom.db.tenancy import set_tenant, system_transaction, tenant_transaction
from taskloom.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from taskloom.orgs import invitations
from taskloom.orgs.models import Membership, Organization, Role
from taskloom.orgs.service import default_name, slugify
from taskloom.runtime import Runtime
from taskloom.sso import policy as sso_policy

INVALID_CREDENTIALS = "invalid email or password"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expires_in: int
    user_id: uuid.UUID
    org_id: uuid.UUID | None


def _now() -> datetime:
    return datetime.now(UTC)


def check_password_policy(runtime: Runtime, password: str) -> None:
    minimum = runtime.settings.password_min_length
    if len(password) < minimum:
        raise BadRequest(f"password must be at least {minimum} characters", code="weak_password")


async def _issue_tokens(
    *,
    runtime: Runtime,
    db: AsyncSession,
    user_id: uuid.UUID,
    org_id: uuid.UUID | None,
    client: AuditContext,
) -> tuple[Session, TokenPair]:
    """Start a session (a refresh-token family) and issue its first token pair."""
    settings = runtime.settings
    session = Session(
        id=uuid.uuid4(),
        user_id=user_id,
        org_id=org_id,
        ip=client.ip,
        user_agent=(client.user_agent or "")[:512] or None,
        expires_at=_now() + timedelta(seconds=settings.refresh_token_ttl_seconds),
        last_used_at=_now(),
    )
    db.add(session)
    await db.flush()
    pair = await _rotate_into(runtime=runtime, db=db, session=session)
    return session, pair


async def _rotate_into(*, runtime: Runtime, db: AsyncSession, session: Session) -> TokenPair:
    settings = runtime.settings
    refresh = new_refresh_token()
    expires_at = min(
        session.expires_at, _now() + timedelta(seconds=settings.refresh_token_ttl_seconds)
    )
    db.add(
        RefreshToken(
            session_id=session.id,
            user_id=session.user_id,
            token_hash=sha256_hex(refresh),
            expires_at=expires_at,
        )
    )
    await db.flush()
    access = issue_access_token(
        settings=settings, user_id=session.user_id, session_id=session.id, org_id=session.org_id
    )
    return TokenPair(
        access_token=access,
        expires_in=settings.access_token_ttl_seconds,
        refresh_token=refresh,
        refresh_expires_in=int((expires_at - _now()).total_seconds()),
        user_id=session.user_id,
        org_id=session.org_id,
    )


async def create_user_with_org(
    *,
    runtime: Runtime,
    db: AsyncSession,
    email: str,
    password: str,
    display_name: str,
    org_name: str | None,
    is_superuser: bool = False,
) -> tuple[User, Organization | None]:
    """Create a user and (optionally) an organization they own, in the caller's transaction.

    Runs on the application role: the tenant is set to the new ids before each insert, so the
    row-level security checks apply to registration too."""
    check_password_policy(runtime, password)
    password_hash = await asyncio.to_thread(runtime.passwords.hash, password)
    user = User(
        id=uuid.uuid4(),
        email=email,
        display_name=display_name,
        password_hash=password_hash,
        is_superuser=is_superuser,
    )
    org = Organization(id=uuid.uuid4(), name=org_name, slug=slugify(org_name)) if org_name else None
    await set_tenant(db, org_id=org.id if org else None, user_id=user.id)
    try:
        async with db.begin_nested():
            db.add(user)
            await db.flush()
    except IntegrityError as exc:
        raise Conflict("an account with this email already exists", code="email_taken") from exc
    if org:
        db.add(org)
        await db.flush()
        db.add(Membership(org_id=org.id, user_id=user.id, role=Role.OWNER.value))
        await db.flush()
    return user, org


async def register(
    *,
    runtime: Runtime,
    email: str,
    password: str,
    display_name: str,
    organization_name: str | None,
    client: AuditContext,
) -> TokenPair:
    """Create an account with its own organization (owner) and sign it in, as REGISTRATION
    allows (closed: nobody; invite: an email with a pending invitation). Counted per client IP
    (REGISTER_MAX_PER_IP): a taken e-mail answers 409, so the limit is what keeps that answer
    from being a fast existence check."""
    mode = runtime.settings.registration_mode
    if mode is Registration.CLOSED:
        raise Forbidden(
            "self-registration is closed on this instance: ask an administrator for an account",
            code="registration_closed",
        )
    await ratelimit.consume_registration(
        redis=runtime.redis, settings=runtime.settings, keys=runtime.keys, ip=client.ip
    )
    # After the count: whether an address is invited is worth no more guesses than the limit.
    if mode is Registration.INVITE and not await invitations.is_invited(
        database=runtime.database, email=email
    ):
        raise Forbidden(
            "registration is by invitation on this instance: ask an organization admin to "
            "invite this email address",
            code="registration_invite_only",
        )
    org_name = organization_name or default_name(display_name)
    async with tenant_transaction(runtime.database, org_id=None, user_id=None) as db:
        user, org = await create_user_with_org(
            runtime=runtime,
            db=db,
            email=email,
            password=password,
            display_name=display_name,
            org_name=org_name,
        )
        assert org is not None
        _, pair = await _issue_tokens(
            runtime=runtime, db=db, user_id=user.id, org_id=org.id, client=client
        )
        await audit.record(
            session=db,
            context=replace(client, actor_user_id=user.id),
            action=AuditAction.AUTH_REGISTER,
            org_id=org.id,
            resource_type="user",
            resource_id=user.id,
        )
    return pair


async def _default_org(db: AsyncSession, user_id: uuid.UUID) -> uuid.UUID | None:
    return (
        await db.execute(
            select(Membership.org_id)
            .where(Membership.user_id == user_id)
            .order_by(Membership.created_at, Membership.org_id)
            .limit(1)
        )
    ).scalar()


async def login(
    *,
    runtime: Runtime,
    email: str,
    password: str,
    org_id: uuid.UUID | None,
    client: AuditContext,
) -> TokenPair:
    """Check the password and start a session. The attempt is counted against the account and
    the IP before the password is hashed (so a parallel burst cannot outrun the limit) and given
    back unless the password was wrong."""
    attempt = await ratelimit.reserve_login(
        redis=runtime.redis,
        settings=runtime.settings,
        keys=runtime.keys,
        email=email,
        ip=client.ip,
    )
    try:
        user = await _check_password(runtime=runtime, email=email, password=password, client=client)
    except BaseException:
        await attempt.abandoned()
        raise
    if user is None:  # the reservation stays: it is this failure's count
        raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
    try:
        return await _start_session(
            runtime=runtime, user=user, password=password, org_id=org_id, client=client
        )
    finally:  # the password was right, whatever happens next
        await attempt.succeeded()


async def _check_password(
    *, runtime: Runtime, email: str, password: str, client: AuditContext
) -> User | None:
    """The user, or None (audited) when the e-mail is unknown or the password wrong; both cost
    one argon2 verification. System transaction: the user is not known until the e-mail has
    been looked up."""
    async with system_transaction(runtime.database) as db:
        user = (
            await db.execute(select(User).where(func.lower(User.email) == email.lower()))
        ).scalar_one_or_none()
        ok = await asyncio.to_thread(
            runtime.passwords.verify, user.password_hash if user else None, password
        )
        if not ok:
            await audit.record(
                session=db,
                context=replace(client, actor_user_id=user.id if user else None),
                action=AuditAction.AUTH_LOGIN_FAILED,
                org_id=await _default_org(db, user.id) if user else None,
                resource_type="user",
                resource_id=user.id if user else None,
                success=False,
                details={"reason": "invalid_credentials"},
            )
    return user if ok else None


async def _start_session(
    *,
    runtime: Runtime,
    user: User,
    password: str,
    org_id: uuid.UUID | None,
    client: AuditContext,
) -> TokenPair:
    """Open a session in `org_id` (default: the user's first organization that a password may
    act in: sso/policy.py), rehashing the password if the hash parameters changed. A refusal
    for single sign-on is audited (and committed) before it is raised."""
    refused: Forbidden | None = None
    async with system_transaction(runtime.database) as db:
        entry = await sso_policy.password_entry(db, user_id=user.id, org_id=org_id)
        if org_id is not None and entry is None:
            raise Forbidden("you are not a member of that organization", code="not_a_member")
        try:
            break_glass = entry is not None and sso_policy.admit_password(
                entry, chosen=org_id is not None
            )
        except Forbidden as refusal:
            assert entry is not None
            refused = refusal
            await audit.record(
                session=db,
                context=replace(client, actor_user_id=user.id),
                action=AuditAction.AUTH_LOGIN_FAILED,
                org_id=entry.org_id,
                resource_type="user",
                resource_id=user.id,
                success=False,
                details={"reason": refusal.code},
            )
        else:
            pair = await _open_session(
                runtime=runtime,
                db=db,
                user=user,
                password=password,
                org_id=entry.org_id if entry else None,
                break_glass=break_glass,
                client=client,
            )
    if refused is not None:
        raise refused
    return pair


async def _open_session(
    *,
    runtime: Runtime,
    db: AsyncSession,
    user: User,
    password: str,
    org_id: uuid.UUID | None,
    break_glass: bool,
    client: AuditContext,
) -> TokenPair:
    values: dict[str, object] = {"last_login_at": _now()}
    if user.password_hash and runtime.passwords.needs_rehash(user.password_hash):
        values["password_hash"] = await asyncio.to_thread(runtime.passwords.hash, password)
    await db.execute(update(User).where(User.id == user.id).values(**values))
    session, pair = await _issue_tokens(
        runtime=runtime, db=db, user_id=user.id, org_id=org_id, client=client
    )
    context = replace(client, actor_user_id=user.id)
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.AUTH_LOGIN,
        org_id=org_id,
        resource_type="session",
        resource_id=session.id,
    )
    if break_glass:
        await _audit_break_glass(db, context, org_id, session.id, via="login")
    return pair


async def _audit_break_glass(
    db: AsyncSession,
    context: AuditContext,
    org_id: uuid.UUID | None,
    session_id: uuid.UUID,
    *,
    via: str,
) -> None:
    """A password session acts in an SSO-required organization as its break-glass owner."""
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.AUTH_BREAK_GLASS,
        org_id=org_id,
        resource_type="session",
        resource_id=session_id,
        details={"via": via},
    )


async def refresh(*, runtime: Runtime, refresh_token: str, client: AuditContext) -> TokenPair:
    """Rotate a refresh token. Presenting one that was already used revokes the whole session
    (the family), because either the client or a thief holds a copy. System transaction: the
    token is the only credential."""
    reused = False
    async with system_transaction(runtime.database) as db:
        token = (
            await db.execute(
                select(RefreshToken)
                .where(RefreshToken.token_hash == sha256_hex(refresh_token))
                .with_for_update()
            )
        ).scalar_one_or_none()
        if token is None:
            raise Unauthorized("invalid refresh token", code="invalid_token")
        session = (
            await db.execute(
                select(Session).where(Session.id == token.session_id).with_for_update()
            )
        ).scalar_one()
        now = _now()
        if token.used_at is not None:
            reused = True
            if session.revoked_at is None:
                session.revoked_at, session.revoked_reason = now, "refresh_token_reuse"
            await audit.record(
                session=db,
                context=replace(client, actor_user_id=session.user_id),
                action=AuditAction.AUTH_REFRESH_REUSE,
                org_id=session.org_id,
                resource_type="session",
                resource_id=session.id,
                success=False,
            )
        elif session.revoked_at is not None:
            raise Unauthorized("session has been signed out", code="session_revoked")
        elif token.expires_at <= now or session.expires_at <= now:
            raise Unauthorized("refresh token expired", code="token_expired")
        else:
            token.used_at = now
            session.last_used_at = now
            pair = await _rotate_into(runtime=runtime, db=db, session=session)
            await audit.record(
                session=db,
                context=replace(client, actor_user_id=session.user_id),
                action=AuditAction.AUTH_REFRESH,
                org_id=session.org_id,
                resource_type="session",
                resource_id=session.id,
            )
    if reused:
        await revocation.publish(runtime, {session.user_id})
        raise Unauthorized(
            "refresh token was already used; the session has been revoked",
            code="refresh_token_reused",
        )
    return pair


async def load_session_principal(*, db: AsyncSession, claims: AccessClaims) -> Principal:
    """Confirm the access token's session is live and read the role from the database."""
    row = (
        await db.execute(
            select(
                Session.revoked_at,
                Session.expires_at,
                Session.org_id,
                User.is_superuser,
                Membership.role,
            )
            .join(User, User.id == Session.user_id)
            .outerjoin(
                Membership,
                and_(Membership.user_id == Session.user_id, Membership.org_id == Session.org_id),
            )
            .where(Session.id == claims.session_id, Session.user_id == claims.user_id)
        )
    ).first()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("session has been signed out", code="session_revoked")
    if row.expires_at <= _now():
        raise Unauthorized("session expired", code="token_expired")
    if row.org_id != claims.org_id:
        raise Unauthorized(
            "the token was issued for another organization; refresh it", code="stale_token"
        )
    return Principal(
        user_id=claims.user_id,
        org_id=claims.org_id,
        role=Role(row.role) if row.role else None,
        kind="session",
        session_id=claims.session_id,
        is_superuser=row.is_superuser,
        expires_at=row.expires_at,
    )


async def resolve_api_key(*, runtime: Runtime, key: str) -> Principal:
    """Look an API key up by its hash (system transaction: the key is the only credential).
    The key acts as its creator, capped at the key's role, while the creator is a member."""
    now = _now()
    async with system_transaction(runtime.database) as db:
        row = (
            await db.execute(
                select(ApiKey, Membership.role, User.is_superuser)
                .join(User, User.id == ApiKey.user_id)
                .outerjoin(
                    Membership,
                    and_(Membership.user_id == ApiKey.user_id, Membership.org_id == ApiKey.org_id),
                )
                .where(ApiKey.key_hash == sha256_hex(key))
            )
        ).first()
        if row is None or row.ApiKey.revoked_at is not None:
            raise Unauthorized("invalid API key", code="invalid_token")
        api_key: ApiKey = row.ApiKey
        if api_key.expires_at is not None and api_key.expires_at <= now:
            raise Unauthorized("API key expired", code="token_expired")
        if row.role is None:
            raise Unauthorized("the key's owner is no longer a member", code="invalid_token")
        if api_key.last_used_at is None or now - api_key.last_used_at > timedelta(minutes=1):
            api_key.last_used_at = now
    member_role, key_role = Role(row.role), Role(api_key.role)
    return Principal(
        user_id=api_key.user_id,
        org_id=api_key.org_id,
        role=key_role if member_role.at_least(key_role) else member_role,
        kind="api_key",
        api_key_id=api_key.id,
        is_superuser=False,  # instance administration needs a signed-in person
        expires_at=api_key.expires_at,
    )


async def logout(
    *, runtime: Runtime, db: AsyncSession, principal: Principal, context: AuditContext
) -> None:
    if principal.session_id is None:
        raise BadRequest(
            "API keys are revoked with DELETE /auth/api-keys/{id}", code="not_a_session"
        )
    await db.execute(
        update(Session)
        .where(Session.id == principal.session_id, Session.revoked_at.is_(None))
        .values(revoked_at=_now(), revoked_reason="logout")
    )
    revocation.mark(db, principal.user_id)
    await _audit_for(
        runtime, db, principal, context, AuditAction.AUTH_LOGOUT, "session", principal.session_id
    )


async def logout_all(
    *, runtime: Runtime, db: AsyncSession, principal: Principal, context: AuditContext
) -> int:
    """Revoke every session of the user; returns how many were live."""
    result = await db.execute(
        update(Session)
        .where(Session.user_id == principal.user_id, Session.revoked_at.is_(None))
        .values(revoked_at=_now(), revoked_reason="logout_all")
    )
    revocation.mark(db, principal.user_id)
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    await _audit_for(
        runtime,
        db,
        principal,
        context,
        AuditAction.AUTH_LOGOUT_ALL,
        "user",
        principal.user_id,
        {"sessions": count},
    )
    return count


async def switch_org(
    *,
    runtime: Runtime,
    db: AsyncSession,
    principal: Principal,
    org_id: uuid.UUID,
    context: AuditContext,
) -> str:
    """Point the session at another organization the user belongs to; returns a new access
    token (older access tokens of this session stop working)."""
    if principal.session_id is None:
        raise BadRequest("an API key is bound to one organization", code="not_a_session")
    # Scoped to the target first: the policy's read share-locks its row (sso/policy.py).
    await set_tenant(db, org_id=org_id, user_id=principal.user_id)
    entry = await sso_policy.switch_entry(
        db, user_id=principal.user_id, session_id=principal.session_id, org_id=org_id
    )
    if entry is None:
        raise NotFound("organization not found")
    break_glass = await sso_policy.admit_switch(runtime.database, entry)
    await db.execute(
        update(Session).where(Session.id == principal.session_id).values(org_id=org_id)
    )
    revocation.mark(db, principal.user_id)  # the session's older access tokens stop working
    if break_glass:
        await _audit_break_glass(db, context, org_id, principal.session_id, via="switch_org")
    await audit.record(
        session=db,
        context=context,
        action=AuditAction.AUTH_SWITCH_ORG,
        org_id=org_id,
        resource_type="session",
        resource_id=principal.session_id,
        details={"from_org_id": str(principal.org_id) if principal.org_id else None},
    )
    return issue_access_token(
        settings=runtime.settings,
        user_id=principal.user_id,
        session_id=principal.session_id,
        org_id=org_id,
    )


async def _audit_for(
    runtime: Runtime,
    db: AsyncSession,
    principal: Principal,
    context: AuditContext,
    action: AuditAction,
    resource_type: str,
    resource_id: object,
    details: dict[str, object] | None = None,
) -> None:
    """Audit an event of a signed-in user in their organization's chain, in the caller's
    transaction. A user who belongs to no organization has no chain the application role may
    append to, so that (rare) event goes to the instance chain through the system transaction.
    """
    if principal.org_id is not None:
        await audit.record(
            session=db,
            context=context,
            action=action,
            org_id=principal.org_id,
            resource_type=resource_type,
            resource_id=resource_id,
            details=details,
        )
        return
    async with system_transaction(runtime.database) as system_db:
        await audit.record(
            session=system_db,
            context=context,
            action=action,
            org_id=None,
            resource_type=resource_type,
            resource_id=resource_id,
            details=details,
        )


# --- for single sign-on (taskloom/sso): a person the provider authenticated ----------------------


async def open_session(
    *,
    runtime: Runtime,
    db: AsyncSession,
    user_id: uuid.UUID,
    org_id: uuid.UUID | None,
    client: AuditContext,
) -> tuple[Session, TokenPair]:
    """Start a session for a person already authenticated another way (an identity provider),
    in the caller's system transaction; the caller audits how they signed in."""
    await db.execute(update(User).where(User.id == user_id).values(last_login_at=_now()))
    return await _issue_tokens(
        runtime=runtime, db=db, user_id=user_id, org_id=org_id, client=client
    )


async def confirm_password(
    *, runtime: Runtime, email: str, password: str, client: AuditContext
) -> User:
    """The account, once its password was given right: counted and audited as a sign-in attempt
    (ratelimit.reserve_login), but no session is started. Unauthorized otherwise."""
    attempt = await ratelimit.reserve_login(
        redis=runtime.redis, settings=runtime.settings, keys=runtime.keys, email=email, ip=client.ip
    )
    try:
        user = await _check_password(runtime=runtime, email=email, password=password, client=client)
    except BaseException:
        await attempt.abandoned()
        raise
    if user is None:
        raise Unauthorized(INVALID_CREDENTIALS, code="invalid_credentials")
    await attempt.succeeded()
    return user


async def end_session(*, runtime: Runtime, session_id: uuid.UUID, reason: str) -> bool:
    """Revoke a session whatever presents it (the identity provider ended it); True when it
    was live. Its person's cached principals are dropped in every process."""
    async with system_transaction(runtime.database) as db:
        ended = (
            await db.execute(
                update(Session)
                .where(Session.id == session_id, Session.revoked_at.is_(None))
                .values(revoked_at=_now(), revoked_reason=reason[:64])
                .returning(Session.user_id)
            )
        ).scalar()
    if ended is not None:
        await revocation.publish(runtime, {ended})
    return ended is not None
