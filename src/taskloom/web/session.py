"""A page request's signed-in context, built from the UI's cookies.

`signed_in(request)` yields a `Page` holding the same `RequestContext` the JSON API builds from
a bearer token (`auth.deps.open_request_context`): one tenant transaction, the role read from
the database, `after_commit` hooks. An expired access token is rotated with the refresh token
transparently (the new cookies are queued for the response); anything else that fails to
authenticate sends the person to the sign-in page.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from fastapi import FastAPI, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from taskloom.audit.service import AuditContext
from taskloom.auth.deps import RequestContext, client_context, get_runtime, open_request_context
from taskloom.auth.models import User
from taskloom.auth.principal import Principal
from taskloom.auth.tokens import API_KEY_PREFIX
from taskloom.errors import Forbidden, Unauthorized
from taskloom.orgs import service as orgs
from taskloom.orgs.models import Role
from taskloom.runtime import Runtime
from taskloom.web import cookies, csrf
from taskloom.web.refresh import RefreshCoalescer

# Codes of an access token that a refresh repairs: expired, or issued before the session
# switched organization (in another tab).
_REFRESHABLE = {"token_expired", "stale_token"}
T = TypeVar("T")


class SignInRequired(Exception):
    """No usable session: the UI's route class redirects to the sign-in page."""


@dataclass(frozen=True)
class OrgChoice:
    org_id: uuid.UUID
    name: str
    role: str


@dataclass(frozen=True)
class Nav:
    """What the page frame shows about the person; plain values, safe to use after the
    transaction has ended (error pages)."""

    user_id: uuid.UUID
    email: str
    display_name: str
    is_superuser: bool
    org_id: uuid.UUID | None
    org_name: str | None
    role: str | None
    orgs: list[OrgChoice]
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.role in (Role.ADMIN.value, Role.OWNER.value)

    @property
    def can_write(self) -> bool:
        return self.role is not None and Role(self.role).at_least(Role.MEMBER)


@dataclass
class Page:
    request: Request
    csrf_token: str
    ctx: RequestContext | None = None
    nav: Nav | None = None

    @property
    def signed_in(self) -> RequestContext:
        assert self.ctx is not None, "an anonymous page has no request context"
        return self.ctx

    @property
    def db(self) -> AsyncSession:
        return self.signed_in.db

    @property
    def principal(self) -> Principal:
        return self.signed_in.principal

    @property
    def audit(self) -> AuditContext:
        return self.signed_in.audit

    @property
    def runtime(self) -> Runtime:
        return get_runtime(self.request)

    def require_role(self, minimum: Role) -> None:
        """The same refusal as the API's `require_role` dependency."""
        if not self.principal.has_role(minimum):
            raise Forbidden(f"this page needs the {minimum.value} role or higher")

    async def form(self) -> FormData:
        """The posted form, once its CSRF token has been checked (the only way handlers read a
        form, so none can forget the check)."""
        data = await self.request.form()
        csrf.check(self.csrf_token, data.get(csrf.FIELD))
        return data


# --- anonymous pages -----------------------------------------------------------------------------


def anonymous(request: Request) -> Page:
    """A page before sign-in: its forms' CSRF token derives from the nonce cookie (set now
    when the browser has none)."""
    nonce = request.cookies.get(cookies.CSRF_COOKIE)
    if not csrf.is_nonce(nonce):
        nonce = csrf.new_nonce()
        cookies.queue_nonce(request, nonce)
    token = csrf.token_for(get_runtime(request).settings, session_id=None, nonce=nonce)
    return Page(request=request, csrf_token=token)


# --- signed-in pages -----------------------------------------------------------------------------


def _coalescer(app: FastAPI) -> RefreshCoalescer:
    found = getattr(app.state, "ui_refreshes", None)
    if found is None:
        found = app.state.ui_refreshes = RefreshCoalescer()
    assert isinstance(found, RefreshCoalescer)
    return found


def _signed_out(request: Request) -> SignInRequired:
    cookies.queue_signed_out(request)
    return SignInRequired()


async def _refreshed_access_token(request: Request, refresh_token: str) -> str:
    runtime = get_runtime(request)
    try:
        pair = await _coalescer(request.app).rotate(runtime, refresh_token, client_context(request))
    except Unauthorized:
        raise _signed_out(request) from None
    cookies.queue_tokens(request, pair)
    return pair.access_token


async def _enter(stack: AsyncExitStack, request: Request) -> RequestContext:
    access = request.cookies.get(cookies.ACCESS_COOKIE)
    refresh = request.cookies.get(cookies.REFRESH_COOKIE)
    refreshed = False
    while True:
        # The cookie holds what sign-in put there: an access token, never an API key.
        if access and not access.startswith(API_KEY_PREFIX):
            try:
                return await stack.enter_async_context(open_request_context(request, access))
            except Unauthorized as refused:
                if refused.code not in _REFRESHABLE:
                    raise _signed_out(request) from None
        if refreshed or not refresh:
            raise _signed_out(request)
        access, refreshed = await _refreshed_access_token(request, refresh), True


async def with_access_token(request: Request, use: Callable[[str], Awaitable[T]]) -> T:
    """`use` the session's access token without opening a page's transaction (a long-lived
    response: the live event stream): refreshed once with the refresh cookie when expired, as
    `signed_in` does; SignInRequired when there is no usable session."""
    access = request.cookies.get(cookies.ACCESS_COOKIE)
    refresh = request.cookies.get(cookies.REFRESH_COOKIE)
    refreshed = False
    while True:
        if access and not access.startswith(API_KEY_PREFIX):
            try:
                return await use(access)
            except Unauthorized as refused:
                if refused.code not in _REFRESHABLE:
                    raise _signed_out(request) from None
        if refreshed or not refresh:
            raise _signed_out(request)
        access, refreshed = await _refreshed_access_token(request, refresh), True


async def _nav(ctx: RequestContext, csrf_token: str) -> Nav:
    user = (
        await ctx.db.execute(
            select(User.email, User.display_name, User.is_superuser).where(
                User.id == ctx.principal.user_id
            )
        )
    ).one()
    mine = await orgs.list_my_organizations(db=ctx.db, principal=ctx.principal)
    current = next((o for o in mine if o.org_id == ctx.principal.org_id), None)
    return Nav(
        user_id=ctx.principal.user_id,
        email=user.email,
        display_name=user.display_name,
        is_superuser=user.is_superuser,
        org_id=ctx.principal.org_id,
        org_name=current.name if current else None,
        role=ctx.principal.role.value if ctx.principal.role else None,
        orgs=[OrgChoice(o.org_id, o.name, o.role.value) for o in mine],
        csrf_token=csrf_token,
    )


@asynccontextmanager
async def signed_in(request: Request) -> AsyncIterator[Page]:
    """The page's tenant transaction (committed when the block ends, rolled back on error)."""
    async with AsyncExitStack() as stack:
        ctx = await _enter(stack, request)
        assert ctx.principal.session_id is not None
        # The pre-sign-in nonce has done its job; a planted one must not linger.
        if request.cookies.get(cookies.CSRF_COOKIE):
            cookies.queue_nonce(request, None)
        token = csrf.token_for(
            ctx.runtime.settings, session_id=ctx.principal.session_id, nonce=None
        )
        nav = await _nav(ctx, token)
        request.state.ui_nav = nav
        yield Page(request=request, csrf_token=token, ctx=ctx, nav=nav)
