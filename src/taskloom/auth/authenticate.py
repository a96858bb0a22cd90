"""From a bearer token to a principal: count the request against its rate limit, then take the
principal from this process's cache when Redis vouches for it (one round trip for both), else
look it up in PostgreSQL as before. See taskloom/auth/principal_cache.py for when an entry is
trusted; whatever is not certain goes to PostgreSQL."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from fastapi import Request
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession

from taskloom.auth import principal_cache, ratelimit, service
from taskloom.auth.api_limits import enforce, principal_limit
from taskloom.auth.principal import Principal
from taskloom.auth.principal_cache import Entry, Vouch, vouched
from taskloom.auth.tokens import API_KEY_PREFIX, AccessClaims, decode_access_token
from taskloom.db.tenancy import tenant_transaction
from taskloom.runtime import Runtime


@dataclass
class Authentication:
    """A request's caller as far as known before its transaction: the tenant to open it for,
    and the principal (None for a session whose row must still be read in that transaction:
    `load`)."""

    runtime: Runtime
    org_id: uuid.UUID | None
    user_id: uuid.UUID
    principal: Principal | None
    claims: AccessClaims | None
    digest: bytes | None
    vouch: Vouch | None

    async def load(self, db: AsyncSession) -> Principal:
        """The session's principal from the database (in the tenant transaction), remembered."""
        assert self.claims is not None
        principal = await service.load_session_principal(db=db, claims=self.claims)
        self._remember(principal, self.vouch, token_expires=self.claims.expires_at)
        return principal

    async def resolve(self) -> Principal:
        """The principal, known already or read in a tenant transaction of its own (for a
        caller that opens none: the execute route's lane)."""
        if self.principal is not None:
            return self.principal
        database = self.runtime.database
        async with tenant_transaction(database, org_id=self.org_id, user_id=self.user_id) as db:
            return await self.load(db)

    def _remember(self, principal: Principal, vouch: Vouch | None, token_expires: float) -> None:
        if self.digest is None:
            return
        expires = principal.expires_at.timestamp() if principal.expires_at else math.inf
        self.runtime.principals.put(
            self.digest,
            user_id=principal.user_id,
            org_id=principal.org_id,
            principal=principal,
            vouch=vouch,
            expires=min(expires, token_expires),
        )


async def authenticate(request: Request, runtime: Runtime, token: str) -> Authentication:
    """Count the request (RateLimited past its limit: no database work) and find its caller."""
    cache = runtime.principals
    digest = cache.digest(token) if cache.enabled else None
    entry = cache.get(digest) if digest is not None else None
    claims: AccessClaims | None = None
    if token.startswith(API_KEY_PREFIX):
        limit = principal_limit(request, runtime, api_key=token, session_id=None)
    else:
        if entry is None or entry.principal is None:
            claims = decode_access_token(settings=runtime.settings, token=token)
            session_id: uuid.UUID | None = claims.session_id
        else:
            session_id = entry.principal.session_id
        limit = principal_limit(request, runtime, api_key=None, session_id=session_id)
    user_id = entry.user_id if entry else claims.user_id if claims else None
    vouch = await _check(request, runtime, limit, user_id if digest is not None else None)
    if entry is not None and vouched(entry, vouch):
        assert entry.principal is not None
        return _known(runtime, entry.principal)
    if entry is not None and digest is not None:
        cache.drop(digest)
    if claims is None and not token.startswith(API_KEY_PREFIX):
        # A cached session Redis did not vouch for: the token is checked afresh.
        claims = decode_access_token(settings=runtime.settings, token=token)
    if claims is not None:
        return Authentication(
            runtime=runtime,
            org_id=claims.org_id,
            user_id=claims.user_id,
            principal=None,
            claims=claims,
            digest=digest,
            vouch=vouch,
        )
    principal = await service.resolve_api_key(runtime=runtime, key=token)
    known = _known(runtime, principal, digest=digest)
    # The stamp read belongs to the user the entry named; an API key's first use learns its user
    # from this lookup, so it is remembered without a stamp (trusted from the next lookup on).
    known._remember(principal, vouch if _same_user(entry, principal) else None, math.inf)
    return known


def _known(runtime: Runtime, principal: Principal, digest: bytes | None = None) -> Authentication:
    return Authentication(
        runtime=runtime,
        org_id=principal.org_id,
        user_id=principal.user_id,
        principal=principal,
        claims=None,
        digest=digest,
        vouch=None,
    )


def _same_user(entry: Entry | None, principal: Principal) -> bool:
    return entry is not None and entry.user_id == principal.user_id


async def _check(
    request: Request,
    runtime: Runtime,
    limit: tuple[ratelimit.Rate, str] | None,
    user_id: uuid.UUID | None,
) -> Vouch | None:
    """Count the request and ask Redis about the cache in one script. Redis failing: with rate
    limits on, the request fails as it always has (503); with them off, no entry is trusted."""
    if not runtime.principals.enabled:
        if limit is not None:
            rate, key = limit
            enforce(request, await ratelimit.take(redis=runtime.redis, key=key, rate=rate))
        return None
    try:
        vouch = await principal_cache.check(
            redis=runtime.redis,
            keys=runtime.keys,
            settings=runtime.settings,
            rate=limit[0] if limit else None,
            rate_key=limit[1]
            if limit
            else runtime.keys.together(ratelimit.AUTH, "auth", "uncounted"),
            user_id=user_id,
        )
    except RedisError:
        if limit is not None:
            raise
        return None
    if vouch.allowance is not None:
        enforce(request, vouch.allowance)
    return vouch
