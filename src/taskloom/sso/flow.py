"""The sign-in flow: start (state, nonce and PKCE verifier kept in Redis, bound to the browser
by a cookie), callback (every check of the answer and the ID token), the person's account
(known identity, link after the password, or just in time), roles from groups, and the end:
a Taskloom session (browser), or a one-time code the CLI exchanges for its tokens.

Every refusal is audited (`auth.sso_failed` {provider, reason}) and signs in nobody.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.audit import service as audit
from taskloom.audit.actions import AuditAction
from taskloom.audit.service import AuditContext
from taskloom.auth import revocation
from taskloom.auth import service as auth
from taskloom.auth.models import User
from taskloom.auth.schemas import Email
from taskloom.db.tenancy import system_transaction
from taskloom.errors import NotFound, Unauthorized, ValidationFailed
from taskloom.orgs.models import Membership, Organization
from taskloom.runtime import Runtime
from taskloom.sso import mappings, oidc, providers
from taskloom.sso.errors import SsoRefused
from taskloom.sso.models import SsoGroupMapping, SsoIdentity, SsoSession
from taskloom.sso.providers import ProviderView

FLOW_SECONDS = 600
LINK_SECONDS = 600
CODE_SECONDS = 60
NONCE_MIN_SECONDS = 3600  # used nonces are remembered at least this long (and past the exp)
Mode = Literal["browser", "token"]
_EMAIL: TypeAdapter[str] = TypeAdapter(Email)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def s256(verifier: str) -> str:
    """The PKCE S256 challenge of a verifier (RFC 7636 §4.2)."""
    raw = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def safe_next(target: str | None) -> str:
    """A same-origin path ("/…", not "//…" nor "/\\…"), else /ui/."""
    if (
        target
        and target.startswith("/")
        and not target.startswith(("//", "/\\"))
        and "\\" not in target
        and not any(ord(c) < 32 for c in target)
    ):
        return target
    return "/ui/"


def loopback_redirect(value: str | None) -> str | None:
    """The CLI's redirect_uri if it is a loopback http URL with a port, else ValidationFailed."""
    if value is None:
        return None
    parts = urlsplit(value)
    if (
        parts.scheme != "http"
        or parts.hostname not in ("127.0.0.1", "::1", "localhost")
        or parts.port is None
        or parts.username
        or parts.password
        or parts.fragment
    ):
        raise ValidationFailed(
            "query.redirect_uri: a loopback URL only: http://127.0.0.1:<port>/…, "
            "http://[::1]:<port>/… or http://localhost:<port>/…"
        )
    return value


class LinkRequired(SsoRefused):
    """An account with the asserted e-mail has a password: it proves it once (link_token)."""

    def __init__(self, *, link_token: str, email: str, provider: str, next_path: str) -> None:
        super().__init__("sso_link_required")
        self.link_token, self.email, self.provider, self.next_path = (
            link_token,
            email,
            provider,
            next_path,
        )


@dataclass(frozen=True)
class Flow:
    slug: str
    nonce: str
    verifier: str
    redirect_uri: str
    next: str
    mode: Mode
    code_challenge: str | None = None
    client_redirect: str | None = None


@dataclass(frozen=True)
class SignIn:
    """A person the provider authenticated, before their Taskloom session exists."""

    user_id: str
    provider_id: str
    identity_id: str
    org_id: str | None
    id_token: str
    refresh_token: str | None


@dataclass(frozen=True)
class Outcome:
    mode: Mode
    next: str
    pair: auth.TokenPair | None = None  # browser
    code: str | None = None  # token mode: the one-time code
    client_redirect: str | None = None


async def record_failure(
    runtime: Runtime, slug: str, reason: str, client: AuditContext, **details: Any
) -> None:
    async with system_transaction(runtime.database) as db:
        await audit.record(
            session=db,
            context=client,
            action=AuditAction.AUTH_SSO_FAILED,
            org_id=None,
            resource_type="sso_provider",
            resource_id=slug,
            success=False,
            details={"provider": slug, "reason": reason, **details},
        )


async def _provider(runtime: Runtime, slug: str) -> ProviderView:
    try:
        provider = await providers.provider_for_flow(
            database=runtime.database, cipher=runtime.cipher, slug=slug
        )
    except NotFound:
        raise SsoRefused("sso_unknown_provider") from None
    if not provider.enabled:
        raise SsoRefused("sso_provider_disabled")
    return provider


# --- start ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    authorize_url: str
    state: str  # the flow cookie's value


async def start(
    *,
    runtime: Runtime,
    slug: str,
    base_url: str,
    next_path: str | None,
    mode: Mode,
    code_challenge: str | None,
    client_redirect: str | None,
) -> Started:
    provider = await _provider(runtime, slug)
    discovery = await oidc.discover(runtime.settings, provider.client.issuer)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters of the unreserved set
    redirect_uri = providers.redirect_uri(runtime.settings, base_url, slug)
    flow = Flow(
        slug=slug,
        nonce=nonce,
        verifier=verifier,
        redirect_uri=redirect_uri,
        next=safe_next(next_path),
        mode=mode,
        code_challenge=code_challenge,
        client_redirect=loopback_redirect(client_redirect),
    )
    await runtime.redis.set(
        runtime.keys("sso", "flow", _digest(state)), json.dumps(asdict(flow)), ex=FLOW_SECONDS
    )
    url = oidc.authorization_url(
        discovery,
        provider.client,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        code_verifier=verifier,
    )
    return Started(authorize_url=url, state=state)


# --- callback ------------------------------------------------------------------------------------


async def take_flow(
    runtime: Runtime, slug: str, params: Mapping[str, str], cookie_state: str | None
) -> Flow:
    """The started flow this answer belongs to, taken once (the browser's cookie must hold the
    state the answer carries)."""
    if not cookie_state:
        raise SsoRefused("sso_flow_not_started")
    state = params.get("state") or ""
    if not hmac.compare_digest(state.encode(), cookie_state.encode()):
        raise SsoRefused("sso_bad_state")
    raw = await runtime.redis.getdel(runtime.keys("sso", "flow", _digest(state)))
    if raw is None:
        raise SsoRefused("sso_flow_expired")
    flow = Flow(**json.loads(raw))
    if flow.slug != slug:
        raise SsoRefused("sso_bad_state")
    return flow


async def complete(
    *, runtime: Runtime, slug: str, flow: Flow, params: Mapping[str, str], client: AuditContext
) -> Outcome:
    """Check the provider's answer and its ID token, find or make the account, and end the
    flow (a session, or a one-time code)."""
    provider = await _provider(runtime, slug)  # disabled since the start: refused now too
    if "error" in params:
        raise SsoRefused(
            "sso_provider_error",
            f"The sign-in provider refused: {params['error'][:100]}.",
        )
    # RFC 9207: a provider that names itself in the answer must name the configured issuer.
    if "iss" in params and params["iss"] != provider.client.issuer:
        raise SsoRefused("sso_wrong_issuer")
    code = params.get("code")
    if not code:
        raise SsoRefused("sso_provider_error", "The provider's answer holds no code.")
    token = await oidc.exchange_code(
        runtime.settings,
        provider.client,
        code=code,
        redirect_uri=flow.redirect_uri,
        code_verifier=flow.verifier,
    )
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise SsoRefused("sso_invalid_id_token", "The provider sent no ID token.")
    claims = await oidc.validate_id_token(
        runtime.settings, provider.client, id_token, nonce=flow.nonce
    )
    await _remember_nonce(runtime, claims)
    if provider.groups_claim and provider.groups_claim not in claims and token.get("access_token"):
        info = await oidc.userinfo(runtime.settings, provider.client, token["access_token"])
        if info and info.get("sub") == claims["sub"] and provider.groups_claim in info:
            claims[provider.groups_claim] = info[provider.groups_claim]
    refresh = token.get("refresh_token") if isinstance(token.get("refresh_token"), str) else None
    sign_in = await authenticate(
        runtime=runtime,
        provider=provider,
        claims=claims,
        id_token=id_token,
        refresh_token=refresh,
        flow=flow,
        client=client,
    )
    return await finish(runtime=runtime, sign_in=sign_in, flow=flow, client=client)


async def _remember_nonce(runtime: Runtime, claims: dict[str, Any]) -> None:
    """A nonce is good for one sign-in: an ID token replayed into another flow is refused even
    if an attacker also planted that flow's nonce."""
    ttl = max(NONCE_MIN_SECONDS, int(claims.get("exp", 0) - time.time()) + oidc.LEEWAY_SECONDS)
    fresh = await runtime.redis.set(
        runtime.keys("sso", "nonce", _digest(str(claims["nonce"]))), "1", nx=True, ex=ttl
    )
    if not fresh:
        raise SsoRefused("sso_nonce_mismatch", "This ID token was already used to sign in.")


def _email_of(provider: ProviderView, claims: dict[str, Any]) -> str:
    try:
        email = _EMAIL.validate_python(claims.get("email"))
    except ValidationError:
        raise SsoRefused(
            "sso_email_unverified", "The provider sent no usable e-mail address."
        ) from None
    promised = (claims.get("email_verified"), claims.get(provider.email_verified_claim))
    domain = email.rsplit("@", 1)[1]
    if not any(v is True or v == "true" for v in promised) and (
        domain not in provider.verified_email_domains
    ):
        raise SsoRefused("sso_email_unverified")
    return email


async def authenticate(
    *,
    runtime: Runtime,
    provider: ProviderView,
    claims: dict[str, Any],
    id_token: str,
    refresh_token: str | None,
    flow: Flow,
    client: AuditContext,
) -> SignIn:
    """The account of the person the ID token names, and their roles from its groups.

    - a known identity (provider, sub): its account;
    - else an account with that (verified) e-mail and a password: not signed in before the
      password is given once (LinkRequired) — an identity provider cannot take an account over
      by asserting someone's e-mail;
    - else an account with that e-mail and no password (made by another provider's sign-in):
      linked only when this provider may create accounts (`jit`), which vouches for it as
      much as creating it would; otherwise sso_no_account;
    - else a new account, only when the provider's `jit` allows it (whatever REGISTRATION says).
    """
    email = _email_of(provider, claims)
    subject = str(claims["sub"])
    async with system_transaction(runtime.database) as db:
        identity = (
            await db.execute(
                select(SsoIdentity).where(
                    SsoIdentity.provider_id == provider.id, SsoIdentity.subject == subject
                )
            )
        ).scalar()
        if identity is None:
            user = (await db.execute(select(User).where(func.lower(User.email) == email))).scalar()
            if user is not None and user.password_hash is not None:
                link_token = await _pending_link(
                    runtime, provider, user, subject, email, claims, id_token, refresh_token, flow
                )
                raise LinkRequired(
                    link_token=link_token,
                    email=user.email,
                    provider=provider.display_name,
                    next_path=flow.next,
                )
            if user is None and not provider.jit:
                raise SsoRefused("sso_no_account")
            if user is not None and not provider.jit:
                raise SsoRefused(
                    "sso_no_account",
                    "This account signs in with another provider; this one may not link it.",
                )
            if user is None:
                user = await _create_account(db, claims, email)
            identity = await _link(db, provider, user.id, subject, email, client, "jit")
        sign_in, changed = await _signed_in(
            db, provider, identity, claims, id_token, refresh_token, client
        )
    if changed:
        await revocation.publish(runtime, {identity.user_id})
    return sign_in


async def _create_account(db: AsyncSession, claims: dict[str, Any], email: str) -> User:
    name = claims.get("name") or claims.get("preferred_username") or email.split("@")[0]
    user = User(id=uuid.uuid4(), email=email, display_name=str(name)[:200], password_hash=None)
    try:
        async with db.begin_nested():
            db.add(user)
            await db.flush()
    except IntegrityError:  # the same address registered or signed in a moment ago
        raise SsoRefused(
            "sso_flow_expired", "An account with this e-mail address was just created: start again."
        ) from None
    return user


async def _link(
    db: AsyncSession,
    provider: ProviderView,
    user_id: uuid.UUID,
    subject: str,
    email: str,
    client: AuditContext,
    how: str,
) -> SsoIdentity:
    identity = SsoIdentity(
        id=uuid.uuid4(), provider_id=provider.id, subject=subject, user_id=user_id, email=email
    )
    db.add(identity)
    await db.flush()
    memberships = await _memberships(db, user_id)
    await audit.record(
        session=db,
        context=AuditContext(**{**asdict(client), "actor_user_id": user_id}),
        action=AuditAction.AUTH_SSO_LINK,
        org_id=memberships[0] if memberships else None,
        resource_type="user",
        resource_id=user_id,
        details={"provider": provider.slug, "how": how},
    )
    return identity


async def _memberships(db: AsyncSession, user_id: uuid.UUID) -> list[uuid.UUID]:
    rows = await db.execute(
        select(Membership.org_id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.created_at, Membership.org_id)
    )
    return list(rows.scalars())


async def session_org(
    db: AsyncSession, user_id: uuid.UUID, provider_id: uuid.UUID
) -> uuid.UUID | None:
    """The person's first organization this session may act in: one that does not require
    SSO, or one this provider maps groups into (then SSO through it satisfies the rule)."""
    rows = await db.execute(
        select(Membership.org_id, Organization.sso_required)
        .join(Organization, Organization.id == Membership.org_id)
        .where(Membership.user_id == user_id)
        .order_by(Membership.created_at, Membership.org_id)
    )
    mapped = set(
        (
            await db.execute(
                select(SsoGroupMapping.org_id).where(SsoGroupMapping.provider_id == provider_id)
            )
        ).scalars()
    )
    return next((r.org_id for r in rows if not r.sso_required or r.org_id in mapped), None)


async def _signed_in(
    db: AsyncSession,
    provider: ProviderView,
    identity: SsoIdentity,
    claims: dict[str, Any],
    id_token: str,
    refresh_token: str | None,
    client: AuditContext,
) -> tuple[SignIn, bool]:
    """The sign-in, and whether the person's roles changed (publish their revocation once the
    transaction has committed: cached principals must not keep the old roles)."""
    groups = mappings.groups_of(claims, provider.groups_claim)
    actor = AuditContext(**{**asdict(client), "actor_user_id": identity.user_id})
    changes = []
    if groups is not None:
        changes = await mappings.apply_group_roles(
            db=db,
            provider_id=provider.id,
            provider_slug=provider.slug,
            user_id=identity.user_id,
            groups=groups,
            context=actor,
        )
        identity.groups = groups
    identity.email = str(claims.get("email", identity.email))[:320]
    identity.last_login_at = datetime.now(UTC)
    await db.flush()
    org = await session_org(db, identity.user_id, provider.id)
    sign_in = SignIn(
        user_id=str(identity.user_id),
        provider_id=str(provider.id),
        identity_id=str(identity.id),
        org_id=str(org) if org else None,
        id_token=id_token,
        refresh_token=refresh_token,
    )
    return sign_in, bool(changes)


# --- the end of a flow: a session, or a code for the CLI -----------------------------------------


async def finish(*, runtime: Runtime, sign_in: SignIn, flow: Flow, client: AuditContext) -> Outcome:
    if flow.mode == "browser":
        pair = await open_session(runtime=runtime, sign_in=sign_in, client=client)
        return Outcome(mode="browser", next=flow.next, pair=pair)
    code = secrets.token_urlsafe(32)
    key = runtime.keys("sso", "code", _digest(code))
    sealed = _seal(runtime, {"sign_in": asdict(sign_in), "challenge": flow.code_challenge}, key)
    await runtime.redis.set(key, sealed, ex=CODE_SECONDS)
    return Outcome(mode="token", next=flow.next, code=code, client_redirect=flow.client_redirect)


def _seal(runtime: Runtime, value: dict[str, Any], key: str) -> str:
    key_id, blob = runtime.cipher.encrypt(value, bound_to=key)
    return json.dumps({"k": key_id, "b": base64.b64encode(blob).decode()})


def _unseal(runtime: Runtime, raw: str | bytes, key: str) -> dict[str, Any]:
    data = json.loads(raw)
    return runtime.cipher.decrypt(data["k"], base64.b64decode(data["b"]), bound_to=key)


async def open_session(
    *, runtime: Runtime, sign_in: SignIn, client: AuditContext
) -> auth.TokenPair:
    """The Taskloom session of an SSO sign-in, with its provider tokens (encrypted, bound to
    the session) for the group check at refresh and the provider's logout."""
    user_id = uuid.UUID(sign_in.user_id)
    org_id = uuid.UUID(sign_in.org_id) if sign_in.org_id else None
    async with system_transaction(runtime.database) as db:
        provider = await providers.provider_by_id(
            db=db, cipher=runtime.cipher, provider_id=uuid.UUID(sign_in.provider_id)
        )
        if provider is None or not provider.enabled:
            raise SsoRefused("sso_provider_disabled")
        session, pair = await auth.open_session(
            runtime=runtime, db=db, user_id=user_id, org_id=org_id, client=client
        )
        row = SsoSession(
            id=uuid.uuid4(),
            session_id=session.id,
            user_id=user_id,
            provider_id=provider.id,
            identity_id=uuid.UUID(sign_in.identity_id),
            offline=sign_in.refresh_token is not None,
        )
        tokens = {"id_token": sign_in.id_token}
        if sign_in.refresh_token:
            tokens["refresh_token"] = sign_in.refresh_token
        row.tokens_key_id, row.tokens_encrypted = runtime.cipher.encrypt(
            tokens, bound_to=row.tokens_bound_to()
        )
        db.add(row)
        await db.flush()
        await audit.record(
            session=db,
            context=AuditContext(**{**asdict(client), "actor_user_id": user_id}),
            action=AuditAction.AUTH_SSO_LOGIN,
            org_id=org_id,
            resource_type="session",
            resource_id=session.id,
            details={"provider": provider.slug, "offline": row.offline},
        )
    return pair


async def exchange(
    *, runtime: Runtime, code: str, code_verifier: str, client: AuditContext
) -> auth.TokenPair:
    """The CLI's tokens for a one-time code: once, within CODE_SECONDS, with the verifier
    whose S256 challenge started the flow."""
    key = runtime.keys("sso", "code", _digest(code))
    raw = await runtime.redis.getdel(key)
    if raw is None:
        raise SsoRefused("sso_bad_exchange")
    kept = _unseal(runtime, raw, key)
    challenge = str(kept.get("challenge") or "")
    if not challenge or not hmac.compare_digest(s256(code_verifier), challenge):
        raise SsoRefused("sso_bad_exchange")
    return await open_session(runtime=runtime, sign_in=SignIn(**kept["sign_in"]), client=client)


# --- linking an account that has a password ------------------------------------------------------


async def _pending_link(
    runtime: Runtime,
    provider: ProviderView,
    user: User,
    subject: str,
    email: str,
    claims: dict[str, Any],
    id_token: str,
    refresh_token: str | None,
    flow: Flow,
) -> str:
    token = secrets.token_urlsafe(32)
    key = runtime.keys("sso", "link", _digest(token))
    pending = {
        "provider_id": str(provider.id),
        "user_id": str(user.id),
        "email": user.email,
        "subject": subject,
        "asserted_email": email,
        "claims": claims,
        "id_token": id_token,
        "refresh_token": refresh_token,
        "flow": asdict(flow),
    }
    await runtime.redis.set(key, _seal(runtime, pending, key), ex=LINK_SECONDS)
    return token


async def link(
    *, runtime: Runtime, link_token: str, password: str, client: AuditContext
) -> tuple[str, Outcome]:
    """Link the identity a pending sign-in asserted to the account whose password is given now,
    and finish that sign-in. Returns (provider slug, outcome)."""
    key = runtime.keys("sso", "link", _digest(link_token))
    raw = await runtime.redis.get(key)
    if raw is None:
        raise SsoRefused("sso_link_failed")
    pending = _unseal(runtime, raw, key)
    flow = Flow(**pending["flow"])
    try:
        return flow.slug, await _link_pending(runtime, key, pending, flow, password, client)
    except SsoRefused as refused:
        refused.provider = flow.slug
        raise


async def _link_pending(
    runtime: Runtime,
    key: str,
    pending: dict[str, Any],
    flow: Flow,
    password: str,
    client: AuditContext,
) -> Outcome:
    try:
        user = await auth.confirm_password(
            runtime=runtime, email=pending["email"], password=password, client=client
        )
    except Unauthorized:
        raise SsoRefused("sso_link_failed") from None
    if user.id != uuid.UUID(pending["user_id"]) or await runtime.redis.getdel(key) is None:
        raise SsoRefused("sso_link_failed")
    provider = await _provider(runtime, flow.slug)
    async with system_transaction(runtime.database) as db:
        try:
            async with db.begin_nested():
                identity = await _link(
                    db,
                    provider,
                    user.id,
                    pending["subject"],
                    pending["asserted_email"],
                    client,
                    "password",
                )
        except IntegrityError:
            raise SsoRefused("sso_link_failed") from None
        sign_in, changed = await _signed_in(
            db,
            provider,
            identity,
            pending["claims"],
            pending["id_token"],
            pending["refresh_token"],
            client,
        )
    if changed:
        await revocation.publish(runtime, {user.id})
    return await finish(runtime=runtime, sign_in=sign_in, flow=flow, client=client)
